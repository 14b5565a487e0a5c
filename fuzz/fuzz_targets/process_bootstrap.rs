//! `mp_process::fuzzing::bootstrap` under libFuzzer: see fuzz/README.md.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(
    init: common::add_seeds(mp_process::fuzzing::bootstrap_seeds()),
    |data: &[u8]| {
        common::check(data, mp_process::fuzzing::bootstrap, mp_process::fuzzing::bootstrap_bound);
    }
);
