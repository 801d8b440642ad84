//! Fuzz target `key_documents`: see `gateway::fuzzing::key_documents` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::key_documents(data));
