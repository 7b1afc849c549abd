//! Replaying fuzz inputs as ordinary tests: the committed seeds (`fuzz/seeds/<target>/`), the
//! crashes the fuzzer found (`fuzz/regressions/<target>/`, possibly empty or absent), and a few
//! large hostile inputs generated here (too big to commit: 1 MB bodies, 100 000-deep nesting).
//!
//! Included with `#[path]` by `token/tests/fuzz_regressions.rs` and
//! `wxdata/tests/fuzz_regressions.rs`; every input runs under `catch_unwind`, so one test names
//! every file that panics, not just the first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Where an input came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A committed, handcrafted or generated seed in `fuzz/seeds/<target>/`.
    Seed,
    /// A crash found by the fuzzer, in `fuzz/regressions/<target>/`.
    Regression,
    /// A large hostile input built in memory by [`generated`].
    Generated,
}

/// One input to replay.
pub struct Input {
    pub name: String,
    pub origin: Origin,
    pub data: Vec<u8>,
}

/// The `fuzz/` folder, seen from a crate of the workspace.
pub fn fuzz_dir(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir).join("..").join("fuzz")
}

fn read_dir(dir: &Path, origin: Origin, out: &mut Vec<Input>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return; // an absent regressions folder means no crash was ever found
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            // READMEs and .gitkeep describe the folder; they are not inputs
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && !name.ends_with(".md")
        })
        .collect();
    paths.sort();
    for path in paths {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        out.push(Input {
            name: path.display().to_string(),
            origin,
            data,
        });
    }
}

/// Seeds, then regressions, then [`generated`] inputs, for `target`.
pub fn inputs(fuzz_dir: &Path, target: &str) -> Vec<Input> {
    let mut out = Vec::new();
    read_dir(&fuzz_dir.join("seeds").join(target), Origin::Seed, &mut out);
    read_dir(
        &fuzz_dir.join("regressions").join(target),
        Origin::Regression,
        &mut out,
    );
    out.extend(generated());
    out
}

/// How many inputs of `origin` there are.
pub fn count(inputs: &[Input], origin: Origin) -> usize {
    inputs.iter().filter(|i| i.origin == origin).count()
}

/// Large hostile inputs, the same for every target.
pub fn generated() -> Vec<Input> {
    const MB: usize = 1 << 20;
    let deep = 100_000;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("1 MB of 'A'", vec![b'A'; MB]),
        ("1 MB of NUL", vec![0u8; MB]),
        ("1 MB of 0xFF", vec![0xffu8; MB]),
        ("1 MB of dots", vec![b'.'; MB]),
        ("deep [ nesting", vec![b'['; deep]),
        ("deep {\"a\": nesting", b"{\"a\":".repeat(deep)),
        (
            "1 MB JSON string",
            [b"\"".as_slice(), &vec![b'x'; MB], b"\""].concat(),
        ),
        (
            "1 MB token shape",
            [
                b"eyJhbGciOiJFZERTQSJ9.".as_slice(),
                &vec![b'A'; MB],
                b".AAAA",
            ]
            .concat(),
        ),
        (
            "invalid UTF-8",
            vec![0xc0, 0x80, 0xed, 0xa0, 0x80, 0xf8, 0x88, 0x80, 0x80, 0x80],
        ),
        ("empty", Vec::new()),
    ];
    // Every mode byte in front of a 64 KB body: reaches the branches keyed on byte 0.
    for mode in [0u8, 1, 2, 3, 0xfe, 0xff] {
        let mut body = vec![mode];
        body.extend(std::iter::repeat_n(b'[', 1 << 16));
        cases.push(("mode byte + 64 KB of [", body));
    }
    cases
        .into_iter()
        .map(|(name, data)| Input {
            name: format!("generated: {name}"),
            origin: Origin::Generated,
            data,
        })
        .collect()
}

/// Runs `check` on every input, catching panics, and fails naming each input that panicked.
pub fn run_all(inputs: &[Input], mut check: impl FnMut(&Input)) {
    let mut failures = Vec::new();
    for input in inputs {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(input))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "non-string panic".into());
            failures.push(format!("{} ({:?}): {message}", input.name, input.origin));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} inputs failed:\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n")
    );
}
