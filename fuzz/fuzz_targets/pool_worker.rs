//! `mp_pool::fuzzing::worker` under libFuzzer: see fuzz/README.md.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(
    init: common::add_seeds(mp_pool::fuzzing::worker_seeds()),
    |data: &[u8]| {
        common::check(data, mp_pool::fuzzing::worker, mp_pool::fuzzing::bound);
    }
);
