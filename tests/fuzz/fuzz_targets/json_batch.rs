//! cargo-fuzz target: `checks::json_batch` (tests/fuzz/checks.rs) on every input.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::json_batch(data));
