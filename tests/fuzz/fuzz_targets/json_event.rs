//! cargo-fuzz target: `checks::json_event` (tests/fuzz/checks.rs) on every input.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::json_event(data));
