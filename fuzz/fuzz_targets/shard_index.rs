#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| muddit_tests::fuzz::shard_index(data));
