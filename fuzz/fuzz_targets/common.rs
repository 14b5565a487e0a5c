//! What every target checks around its decoder: no panic (libFuzzer reports it), no
//! more bytes held at once than the decoder's bound for this input, and no fd left.
use mp_core::fuzzing::{measure, open_fds, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Runs `decode` on `data` and asserts the invariants.
pub fn check(data: &[u8], decode: fn(&[u8]), bound: fn(&[u8]) -> usize) {
    let fds = open_fds();
    let ((), seen) = measure(|| decode(data));
    if let Some(a) = seen {
        assert!(
            a.peak <= bound(data),
            "{} bytes held at once (largest request {}), over the bound {}",
            a.peak,
            a.largest,
            bound(data)
        );
    }
    assert_eq!(open_fds(), fds, "an fd was left open");
}

/// Writes `seeds` (valid encodings from the crate's fuzzing module) into the corpus
/// directory libFuzzer was given first, so that a run starts from the deep paths.
pub fn add_seeds(seeds: Vec<Vec<u8>>) {
    let Some(dir) = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-') && std::path::Path::new(a).is_dir())
    else {
        return;
    };
    for (i, s) in seeds.iter().enumerate() {
        let _ = std::fs::write(std::path::Path::new(&dir).join(format!("seed-{i}")), s);
    }
}
