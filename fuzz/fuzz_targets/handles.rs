//! `mp_core::fuzzing::handles` under libFuzzer: see fuzz/README.md.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(
    init: common::add_seeds(mp_core::fuzzing::handles_seeds()),
    |data: &[u8]| {
        common::check(data, mp_core::fuzzing::handles, mp_core::fuzzing::handles_bound);
    }
);
