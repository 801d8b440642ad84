//! Fuzz target `path`: see `gateway::fuzzing::path` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::path(data));
