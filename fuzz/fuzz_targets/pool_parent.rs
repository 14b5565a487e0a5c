//! `mp_pool::fuzzing::parent` under libFuzzer: see fuzz/README.md.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(
    init: common::add_seeds(mp_pool::fuzzing::parent_seeds()),
    |data: &[u8]| {
        common::check(data, mp_pool::fuzzing::parent, mp_pool::fuzzing::bound);
    }
);
