//! Fuzz target `route`: see `gateway::fuzzing::route` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::route(data));
