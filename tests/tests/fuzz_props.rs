//! The fuzz targets of `muddit_tests::fuzz` as bounded, seeded property tests on stable Rust:
//! each target gets `CASES` inputs from a fixed seed (the same inputs every run), half of them
//! mutations of its valid seeds (bytes flipped, cut, repeated, numbers made huge), half built
//! from scratch where the target has a structure worth generating (safetensors headers, index
//! maps, config values). A failure prints the input proptest shrank it to.

use muddit_tests::fuzz;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Inputs per target and strategy.
const CASES: u32 = 192;

fn runner() -> TestRunner {
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

/// One change to a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Cut(usize),
    Repeat(usize, usize),
    /// Replaces the digit run around a position with a huge or negative number.
    Number(usize, &'static str),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let numbers = prop::sample::select(vec![
        "0",
        "-1",
        "18446744073709551615",
        "1e308",
        "4294967296",
        "null",
        "\"x\"",
        "[]",
    ]);
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Set(p, b)),
        any::<usize>().prop_map(Mutation::Cut),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| Mutation::Repeat(p, n)),
        (any::<usize>(), numbers).prop_map(|(p, n)| Mutation::Number(p, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        let at = |p: usize| p % bytes.len();
        match *m {
            Mutation::Set(p, b) => {
                let i = at(p);
                bytes[i] = b;
            }
            Mutation::Cut(p) => bytes.truncate(at(p)),
            Mutation::Repeat(p, n) => {
                let i = at(p);
                let piece: Vec<u8> = bytes[i..(i + n).min(bytes.len())].to_vec();
                bytes.splice(i..i, piece);
            }
            Mutation::Number(p, n) => {
                let i = at(p);
                let start = bytes[..i]
                    .iter()
                    .rposition(|b| !b.is_ascii_digit())
                    .map_or(0, |s| s + 1);
                let end = bytes[i..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(bytes.len(), |e| i + e);
                if start < end {
                    bytes.splice(start..end, n.bytes());
                }
            }
        }
    }
    bytes
}

/// Runs `target` on mutations of its seeds.
fn mutated(name: &str, target: fn(&[u8])) {
    let seeds = fuzz::seeds(name);
    let strategy = (0..seeds.len(), prop::collection::vec(mutation(), 1..6));
    runner()
        .run(&strategy, |(seed, mutations)| {
            target(&apply(seeds[seed].clone(), &mutations));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// Runs `target` on inputs from `strategy`.
fn generated<S: Strategy<Value = Vec<u8>>>(name: &str, target: fn(&[u8]), strategy: S) {
    runner()
        .run(&strategy, |bytes| {
            target(&bytes);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// A safetensors file whose header states random dtypes, shapes and offsets over random data.
fn safetensors_bytes() -> impl Strategy<Value = Vec<u8>> {
    let dtype = prop::sample::select(vec![
        "F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "Q",
    ]);
    let dim = prop_oneof![0u64..5, Just(1u64 << 32), Just(u64::MAX)];
    let tensor = (dtype, prop::collection::vec(dim, 0..4), 0u64..64, 0u64..64);
    (
        prop::collection::vec(tensor, 0..4),
        0usize..64,
        any::<bool>(),
    )
        .prop_map(|(tensors, data, lie)| {
            let entries: Vec<String> = tensors
                .iter()
                .enumerate()
                .map(|(i, (d, s, a, b))| {
                    format!(r#""t{i}":{{"dtype":"{d}","shape":{s:?},"data_offsets":[{a},{b}]}}"#)
                })
                .collect();
            let header = format!("{{{}}}", entries.join(","));
            let len = if lie {
                header.len() as u64 + 7
            } else {
                header.len() as u64
            };
            let mut out = len.to_le_bytes().to_vec();
            out.extend_from_slice(header.as_bytes());
            out.extend(std::iter::repeat_n(0x3c, data));
            out
        })
}

/// An index whose weight map names random shards: plain, nested, absolute, `..`, empty.
fn index_bytes() -> impl Strategy<Value = Vec<u8>> {
    let shard = prop::sample::select(vec![
        "a.safetensors",
        "sub",
        "sub/../a.safetensors",
        "../a.safetensors",
        "/etc/passwd",
        "",
        ".",
        "missing.safetensors",
        "a.safetensors/",
    ]);
    prop::collection::vec(("[a-z]{1,3}", shard), 0..4).prop_map(|pairs| {
        let map: serde_json::Map<String, serde_json::Value> =
            pairs.into_iter().map(|(k, v)| (k, v.into())).collect();
        serde_json::json!({ "weight_map": map })
            .to_string()
            .into_bytes()
    })
}

/// A config with one key of the committed configs set to a random JSON value.
fn config_bytes() -> impl Strategy<Value = Vec<u8>> {
    let seeds = fuzz::seeds("config_json");
    let value = prop_oneof![
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        "[a-zA-Z_]{0,12}".prop_map(serde_json::Value::from),
        prop::collection::vec(0u64..5000, 0..20).prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
    ];
    (0..seeds.len(), any::<prop::sample::Index>(), value).prop_map(move |(seed, key, v)| {
        let mut cfg: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&seeds[seed]).expect("seed config");
        let k = key.get(&cfg.keys().cloned().collect::<Vec<_>>()).clone();
        cfg.insert(k, v);
        serde_json::Value::Object(cfg).to_string().into_bytes()
    })
}

/// A test `$test` of fuzz target `fuzz::$target` (seeds `$target`): mutations of its seeds,
/// then inputs from each `$strategy`.
macro_rules! fuzz_test {
    ($test:ident, $target:ident $(, $strategy:expr)*) => {
        #[test]
        fn $test() {
            let name = stringify!($target);
            mutated(name, fuzz::$target);
            $(generated(name, fuzz::$target, $strategy);)*
        }
    };
}

fuzz_test!(
    safetensors_headers_never_panic,
    safetensors_file,
    safetensors_bytes()
);
fuzz_test!(
    shard_indexes_never_panic_or_leave_the_folder,
    shard_index,
    index_bytes()
);
fuzz_test!(pth_files_never_panic, pth_file);
fuzz_test!(configs_never_panic, config_json, config_bytes());
fuzz_test!(
    tokenizer_input_never_panics,
    tokenizer_input,
    prop::collection::vec(any::<u8>(), 0..400),
    "\\PC{0,300}".prop_map(String::into_bytes)
);
