//! The fuzz targets' invariants as plain tests: a seed corpus (`fuzz/corpus/request`) and many
//! deterministic mutations of it through the proxy's request checks and forwarded-header
//! rewrite, and through the worker's pure `Host`/`X-Forwarded-*` helpers. `cargo fuzz` explores
//! the same entry points further.

use kubewsgi::proxy::fuzz_checks;

/// xorshift64*: reproducible without a dependency.
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

const SPECIAL: &[u8] = b" :\r\n\0\t,;@/[]?#%\x7f\xff.-_0123456789aZ*\\\"=";

fn seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/request");
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert!(v.len() >= 10, "seed corpus in {}", dir.display());
    v.sort();
    v
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, others: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(6) {
            0 if len > 0 => input[rng.below(len)] = SPECIAL[rng.below(SPECIAL.len())],
            1 => input.insert(rng.below(len + 1), SPECIAL[rng.below(SPECIAL.len())]),
            2 if len > 0 => {
                input.remove(rng.below(len));
            }
            3 if len > 0 => input[rng.below(len)] = rng.next() as u8,
            4 => {
                let o = &others[rng.below(others.len())];
                let at = rng.below(o.len() + 1);
                let pos = rng.below(len + 1);
                let tail: Vec<u8> = o[at..].iter().take(40).copied().collect();
                input.splice(pos..pos, tail);
            }
            _ if len > 0 => input[0] = rng.next() as u8,
            _ => {}
        }
    }
}

#[test]
fn request_checks_hold_over_mutated_corpus() {
    let seeds = seeds();
    for s in &seeds {
        fuzz_checks::request_bytes(s);
    }
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    for _ in 0..200_000 {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut input, &seeds);
        fuzz_checks::request_bytes(&input);
    }
}

#[cfg(feature = "python")]
#[test]
fn worker_host_and_forwarded_helpers_hold_over_mutations() {
    use kubewsgi::worker::python::environ::{forwarded, split_host};
    let seeds: Vec<&[u8]> = vec![
        b"a.test",
        b"a.test:8080",
        b"[::1]:80",
        b"[::1]",
        b" h:1 ",
        b"h:",
        b":80",
        b"a:b:c",
    ];
    let mut rng = Rng(0xfeed_beef_0bad_cafe);
    for i in 0..200_000 {
        let mut h = seeds[i % seeds.len()].to_vec();
        let others: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
        mutate(&mut rng, &mut h, &others);
        let (name, port) = split_host(&h, "80");
        let trimmed = h.trim_ascii();
        if port != "80" || name.len() != trimmed.len() {
            // A port was split off: digits only, and name ":" port is the input.
            assert!(
                !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()),
                "{h:?}"
            );
            assert_eq!(
                [&name[..], b":", port.as_bytes()].concat(),
                trimmed,
                "{h:?}"
            );
        } else {
            assert_eq!(name, trimmed, "{h:?}");
        }
        let mut map = http::HeaderMap::new();
        for (n, v) in [
            ("x-forwarded-for", &h),
            ("x-forwarded-host", &h),
            ("x-forwarded-proto", &h),
        ] {
            if let Ok(v) = http::HeaderValue::from_bytes(v) {
                map.append(n, v);
            }
        }
        let f = forwarded(&map);
        for part in [f.host, f.remote].into_iter().flatten() {
            assert!(!part.contains(&b','), "one hop only: {part:?}");
            assert!(!part.is_empty());
        }
    }
}
