//! `mp_core::fuzzing::frame` under libFuzzer: see fuzz/README.md.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(
    init: common::add_seeds(mp_core::fuzzing::frame_seeds()),
    |data: &[u8]| {
        common::check(data, mp_core::fuzzing::frame, mp_core::fuzzing::frame_bound);
    }
);
