#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| muddit_tests::fuzz::safetensors_file(data));
