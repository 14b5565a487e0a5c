//! `mp_shm::fuzzing::tracker` under libFuzzer: see fuzz/README.md.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(
    init: common::add_seeds(mp_shm::fuzzing::tracker_seeds()),
    |data: &[u8]| {
        common::check(data, mp_shm::fuzzing::tracker, mp_shm::fuzzing::tracker_bound);
    }
);
