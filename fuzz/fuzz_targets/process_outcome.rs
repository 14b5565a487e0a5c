//! `mp_process::fuzzing::outcome` under libFuzzer: see fuzz/README.md.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(
    init: common::add_seeds(mp_process::fuzzing::outcome_seeds()),
    |data: &[u8]| {
        common::check(data, mp_process::fuzzing::outcome, mp_process::fuzzing::outcome_bound);
    }
);
