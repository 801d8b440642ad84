//! Fuzz target `head`: see `gateway::fuzzing::head` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::head(data));
