#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parachute_runner::fuzz_targets::job_note(data));
