//! `mp_pipe::fuzzing::connection` under libFuzzer: see fuzz/README.md.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(
    init: common::add_seeds(mp_pipe::fuzzing::connection_seeds()),
    |data: &[u8]| {
        common::check(data, mp_pipe::fuzzing::connection, mp_pipe::fuzzing::connection_bound);
    }
);
