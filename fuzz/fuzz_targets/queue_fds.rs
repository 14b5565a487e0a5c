//! `mp_queue::fuzzing::side_channel` under libFuzzer: see fuzz/README.md.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(
    init: common::add_seeds(mp_queue::fuzzing::side_channel_seeds()),
    |data: &[u8]| {
        common::check(data, mp_queue::fuzzing::side_channel, mp_queue::fuzzing::side_channel_bound);
    }
);
