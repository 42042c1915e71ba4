//! The fuzz targets on stable, in every test run: the committed seeds and
//! regression inputs (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`)
//! replayed as they are, then a bounded, deterministic mutation run from
//! them. The long coverage-guided runs are `cargo +nightly fuzz run`.

use std::path::{Path, PathBuf};

use parachute_runner::fuzz_targets::TARGETS;

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Runs `f` on `data`, naming the input if it panics.
fn run(name: &str, f: fn(&[u8]), data: &[u8], origin: &str) {
    let result = std::panic::catch_unwind(|| f(data));
    assert!(
        result.is_ok(),
        "{name} panicked on {origin}: {:?}",
        String::from_utf8_lossy(data)
    );
}

#[test]
fn seeds_and_regressions_replay() {
    let mut count = 0;
    for (name, f) in TARGETS {
        let seeds = inputs("seeds", name);
        assert!(!seeds.is_empty(), "no seeds for {name}");
        for (path, data) in seeds.iter().chain(inputs("regressions", name).iter()) {
            run(name, f, data, &path.display().to_string());
            count += 1;
        }
    }
    assert!(count >= TARGETS.len());
}

/// xorshift64*: a small deterministic generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to these parsers, to splice in.
const TOKENS: &[&[u8]] = &[
    b"---\n",
    b"{{",
    b"}}",
    b"*/",
    b"-",
    b",",
    b"/",
    b"%",
    b"%2F",
    b"%00",
    b"..",
    b"\"",
    b"\\u0000",
    b"[",
    b"]",
    b"{",
    b"}",
    b":",
    b"\n",
    b"\r\n",
    b"\0",
    b"\xff",
    b"\xe2\x9c",
    b"99999999999999999999",
    b"-1",
    b"1e308",
    b"null",
    b"true",
    b"schedule: ",
    b"timeout: ",
    b"tags: ",
    b"@",
    b"L",
    b"#",
    b"?",
    b"SUN",
    b"feb",
    b"7",
    b"0",
    b"60",
    b"eyJ",
    b".",
];

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.next() as u8;
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                let n = rng.below(data.len() - i + 1);
                data.drain(i..i + n);
            }
            2 => {
                let i = rng.below(data.len() + 1);
                let t = TOKENS[rng.below(TOKENS.len())];
                data.splice(i..i, t.iter().copied());
            }
            3 if !other.is_empty() => {
                let i = rng.below(data.len() + 1);
                let j = rng.below(other.len());
                let n = rng.below(other.len() - j + 1);
                data.splice(i..i, other[j..j + n].iter().copied());
            }
            4 if !data.is_empty() && data.len() < 4096 => {
                let i = rng.below(data.len());
                let n = rng.below(data.len() - i + 1).min(64);
                let chunk: Vec<u8> = data[i..i + n].to_vec();
                data.splice(i..i, chunk);
            }
            _ => {
                let i = rng.below(data.len() + 1);
                data.insert(i, rng.next() as u8);
            }
        }
    }
    data
}

#[test]
fn bounded_random_mutations_never_panic() {
    const ROUNDS: usize = 2500;
    for (t, (name, f)) in TARGETS.iter().enumerate() {
        let seeds: Vec<Vec<u8>> = inputs("seeds", name).into_iter().map(|(_, d)| d).collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
        for round in 0..ROUNDS {
            let seed = &seeds[rng.below(seeds.len())];
            let other = &seeds[rng.below(seeds.len())];
            let data = mutate(&mut rng, seed, other);
            run(
                name,
                *f,
                &data,
                &format!("round {round} (seed {:#x})", t as u64 + 1),
            );
        }
    }
}
