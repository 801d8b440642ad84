//! Fuzz target `token`: see `gateway::fuzzing::token` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::token(data));
