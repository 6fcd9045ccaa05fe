//! cargo-fuzz target: `checks::avro_binary` (tests/fuzz/checks.rs) on every input.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::avro_binary(data));
