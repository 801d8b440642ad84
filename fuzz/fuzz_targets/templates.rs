//! Fuzz target `templates`: see `gateway::fuzzing::templates` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::templates(data));
