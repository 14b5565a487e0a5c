//! `mp_queue::fuzzing::ring` under libFuzzer: see fuzz/README.md.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(
    init: common::add_seeds(mp_queue::fuzzing::ring_seeds()),
    |data: &[u8]| {
        common::check(data, mp_queue::fuzzing::ring, mp_queue::fuzzing::ring_bound);
    }
);
