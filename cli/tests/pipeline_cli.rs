//! `muddit t2i`, `caption`, `vqa` and `bench` run as a user runs them, on a random tiny model.

mod common;

use common::{muddit, stderr, stdout};
use muddit_engine::tensor_io::{TensorFile, Values};

/// A temporary folder holding a random tiny model at `model/`.
fn with_model() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = muddit(
        &[
            "debug",
            "random-checkpoint",
            "--preset",
            "tiny",
            "--out",
            "model",
            "-q",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    tmp
}

const T2I: [&str; 10] = [
    "--model", "model", "t2i", "--width", "64", "--height", "64", "--steps", "3", "-q",
];

#[test]
fn t2i_writes_png_and_ids_and_from_png_reproduces_it() {
    let tmp = with_model();
    let dir = tmp.path();
    let mut args = T2I.to_vec();
    args.extend([
        "--prompt",
        "a red circle",
        "--seed",
        "11",
        "--output",
        "a.png",
        "--output-ids",
        "ids.safetensors",
    ]);
    let o = muddit(&args, dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(dir.join("a.png")).expect("a PNG").to_rgb8();
    assert_eq!((img.width(), img.height()), (64, 64));
    let ids = TensorFile::read(&dir.join("ids.safetensors")).expect("ids");
    let t = ids.get("ids").expect("`ids`");
    assert_eq!(
        t.shape,
        vec![1, 4, 4],
        "64 px over the tiny VQ-VAE's scale of 16"
    );
    let Values::I64(v) = &t.values else {
        panic!("ids must be i64")
    };
    assert!(
        v.iter().all(|&id| (0..64).contains(&id)),
        "every id is a code after the last step"
    );

    let o = muddit(
        &["t2i", "--from-png", "a.png", "--output", "b.png", "-q"],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dir.join("a.png")).expect("a"),
        std::fs::read(dir.join("b.png")).expect("b"),
        "same parameters, same bytes"
    );

    // Another seed gives another image.
    let mut args = T2I.to_vec();
    args.extend([
        "--prompt",
        "a red circle",
        "--seed",
        "12",
        "--output",
        "c.png",
    ]);
    assert!(muddit(&args, dir).status.success());
    assert_ne!(
        std::fs::read(dir.join("a.png")).expect("a"),
        std::fs::read(dir.join("c.png")).expect("c")
    );
}

#[test]
fn t2i_batches_need_a_pattern_and_from_png_picks_the_right_image() {
    let tmp = with_model();
    let dir = tmp.path();
    let mut args = T2I.to_vec();
    args.extend([
        "--prompt", "one", "--prompt", "two", "--batch", "2", "--seed", "5", "--output", "x.png",
    ]);
    let o = muddit(&args, dir);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("%d"), "{}", stderr(&o));
    let mut args = T2I.to_vec();
    args.extend([
        "--prompt", "one", "--prompt", "two", "--batch", "2", "--seed", "5", "--output", "x-%d.png",
    ]);
    let o = muddit(&args, dir);
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 0..4 {
        assert!(dir.join(format!("x-{i}.png")).is_file());
    }
    let o = muddit(
        &[
            "t2i",
            "--from-png",
            "x-2.png",
            "--output",
            "again.png",
            "-q",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dir.join("x-2.png")).expect("x-2"),
        std::fs::read(dir.join("again.png")).expect("again")
    );
}

#[test]
fn t2i_greedy_is_deterministic_and_says_what_has_no_effect() {
    let tmp = with_model();
    let dir = tmp.path();
    let run = |out: &str, seed: &str| {
        let mut args: Vec<&str> = T2I.iter().copied().filter(|a| *a != "-q").collect();
        args.extend([
            "--prompt", "a cat", "--greedy", "--seed", seed, "--output", out,
        ]);
        muddit(&args, dir)
    };
    let o = run("g1.png", "1");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--seed has no effect"),
        "{}",
        stderr(&o)
    );
    assert!(run("g2.png", "2").status.success());
    let a = image::open(dir.join("g1.png")).expect("g1").to_rgb8();
    let b = image::open(dir.join("g2.png")).expect("g2").to_rgb8();
    assert_eq!(a.as_raw(), b.as_raw());
}

/// `--dtype bf16` runs the whole pipeline with bf16 products: an image comes out and two runs are
/// identical. Its distance from the f32 image is only printed: on random weights greedy choices
/// are full of near-ties that bf16 rounding flips.
#[test]
fn t2i_with_bf16_products_runs_and_is_deterministic() {
    let tmp = with_model();
    let dir = tmp.path();
    let run = |out: &str, dtype: &str| {
        let mut args = vec!["--dtype", dtype];
        args.extend(T2I);
        args.extend(["--prompt", "a cat", "--greedy", "--output", out]);
        muddit(&args, dir)
    };
    for (out, dtype) in [("b1.png", "bf16"), ("b2.png", "bf16"), ("f.png", "f32")] {
        let o = run(out, dtype);
        assert!(o.status.success(), "{dtype}: {}", stderr(&o));
    }
    let img = |name: &str| image::open(dir.join(name)).expect(name).to_rgb8();
    let (b1, b2, f) = (img("b1.png"), img("b2.png"), img("f.png"));
    assert_eq!(b1.dimensions(), (64, 64));
    assert_eq!(b1.as_raw(), b2.as_raw(), "bf16 runs differ");
    let differing = b1
        .as_raw()
        .iter()
        .zip(f.as_raw())
        .filter(|(a, b)| a != b)
        .count();
    println!(
        "bf16 vs f32: {differing} of {} channel values differ",
        f.as_raw().len()
    );
}

#[test]
fn t2i_user_errors_exit_2() {
    let tmp = with_model();
    let dir = tmp.path();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--model", "model", "t2i", "--prompt", "x", "--width", "60", "--height", "64",
                "--steps", "2",
            ],
            "width",
        ),
        (
            vec!["--model", "model", "t2i", "--width", "64", "--height", "64"],
            "--prompt",
        ),
        (
            vec![
                "--model", "model", "t2i", "--prompt", "  ", "--width", "64", "--height", "64",
            ],
            "empty",
        ),
        (
            vec![
                "--model", "model", "t2i", "--prompt", "x", "--steps", "0", "--width", "64",
                "--height", "64",
            ],
            "step",
        ),
        (
            vec![
                "--model", "model", "t2i", "--prompt", "x", "--cfg=-3", "--width", "64",
                "--height", "64",
            ],
            "cfg",
        ),
        (
            vec![
                "--model",
                "model",
                "t2i",
                "--prompt",
                "x",
                "--temperature",
                "2,abc",
                "--width",
                "64",
                "--height",
                "64",
            ],
            "abc",
        ),
        (
            vec![
                "--model",
                "model",
                "t2i",
                "--prompt",
                "x",
                "--schedule",
                "square",
                "--width",
                "64",
                "--height",
                "64",
            ],
            "square",
        ),
        (
            vec![
                "--model", "model", "--device", "cuda", "t2i", "--prompt", "x",
            ],
            "cuda",
        ),
        (
            vec!["--model", "model", "--device", "cuda", "caption", "img.png"],
            "--device cuda",
        ),
        (
            vec![
                "--model",
                "model",
                "--device",
                "cuda:0",
                "vqa",
                "--question",
                "what?",
                "img.png",
            ],
            "--device cuda:0",
        ),
        (
            vec!["--model", "nowhere", "t2i", "--prompt", "x"],
            "nowhere",
        ),
        (vec!["t2i", "--from-png", "nothing.png"], "nothing.png"),
    ];
    for (args, needle) in cases {
        let o = muddit(&args, dir);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "{args:?}: expected `{needle}` in: {}",
            stderr(&o)
        );
    }
    // An existing output is never overwritten without --overwrite.
    std::fs::write(dir.join("keep.png"), b"precious").expect("write");
    let mut args = T2I.to_vec();
    args.extend(["--prompt", "x", "--output", "keep.png"]);
    let o = muddit(&args, dir);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dir.join("keep.png")).expect("read"),
        b"precious"
    );
    args.push("--overwrite");
    assert!(muddit(&args, dir).status.success());
}

#[test]
fn caption_vqa_and_bench_run() {
    let tmp = with_model();
    let dir = tmp.path();
    let mut args = T2I.to_vec();
    args.extend(["--prompt", "x", "--output", "img.png", "--seed", "1"]);
    assert!(muddit(&args, dir).status.success());

    let o = muddit(
        &[
            "--model",
            "model",
            "caption",
            "--resolution",
            "64",
            "--steps",
            "2",
            "--cfg",
            "3",
            "img.png",
            "img.png",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).lines().count(),
        2,
        "one caption per image: {}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("--cfg 3 has no effect"),
        "{}",
        stderr(&o)
    );

    let o = muddit(
        &[
            "--model",
            "model",
            "--json",
            "vqa",
            "--question",
            "what color is it?",
            "--resolution",
            "64",
            "--steps",
            "2",
            "--greedy",
            "img.png",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(rows.as_array().map(|a| a.len()), Some(1));

    let o = muddit(
        &[
            "--model", "model", "--json", "bench", "--width", "64", "--height", "64", "--steps",
            "2",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    for key in [
        "load_s",
        "text_encode_ms",
        "sampler_ms",
        "vq_decode_ms",
        "total_s",
        "device",
        "dtype",
        "threads",
    ] {
        assert!(r.get(key).is_some(), "bench --json lacks {key}: {r}");
    }
    assert!(
        r["step_ms"]["median"].as_f64().is_some_and(|m| m > 0.0),
        "{r}"
    );
}

#[test]
fn caption_user_errors_exit_2() {
    let tmp = with_model();
    let dir = tmp.path();
    std::fs::write(dir.join("broken.png"), b"not an image").expect("write");
    let o = muddit(
        &[
            "--model",
            "model",
            "caption",
            "--resolution",
            "64",
            "broken.png",
        ],
        dir,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("broken.png"), "{}", stderr(&o));
    let o = muddit(
        &[
            "--model",
            "model",
            "caption",
            "--resolution",
            "64",
            "missing.png",
        ],
        dir,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing.png"), "{}", stderr(&o));

    let mut args = T2I.to_vec();
    args.extend(["--prompt", "x", "--output", "img.png"]);
    assert!(muddit(&args, dir).status.success());
    let o = muddit(
        &[
            "--model",
            "model",
            "caption",
            "--resolution",
            "60",
            "img.png",
        ],
        dir,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("60"), "{}", stderr(&o));

    std::fs::remove_file(dir.join("model/mask_token_embedding.pth")).expect("rm");
    let o = muddit(
        &[
            "--model",
            "model",
            "caption",
            "--resolution",
            "64",
            "img.png",
        ],
        dir,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("mask_token_embedding"),
        "{}",
        stderr(&o)
    );
}

/// `muddit ARGS` with `MUDDIT_ISA` set.
fn muddit_isa(isa: &str, args: &[&str], dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_muddit"))
        .args(args)
        .current_dir(dir)
        .env_remove("MUDDIT_MODEL")
        .env("MUDDIT_ISA", isa)
        .output()
        .expect("spawn muddit")
}

#[test]
fn the_cpu_level_is_named_capped_and_checked() {
    let tmp = with_model();
    let dir = tmp.path();
    let bench = [
        "--model", "model", "--json", "bench", "--width", "64", "--height", "64", "--steps", "1",
    ];
    let o = muddit(&bench, dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    for dtype in ["f32", "bf16"] {
        let level = r["cpu_kernels"][dtype]["isa"].as_str().expect("isa");
        assert!(
            ["portable", "avx2", "avx512", "avx512bf16", "amx"].contains(&level),
            "{r}"
        );
        assert!(r["cpu_kernels"][dtype]["instruction"].is_string(), "{r}");
    }
    // Capped to the portable level, every dtype says so (and still runs).
    let o = muddit_isa("portable", &bench, dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(r["cpu_kernels"]["bf16"]["isa"], "portable", "{r}");
    assert_eq!(r["cpu_kernels"]["f32"]["instruction"], "gemm crate", "{r}");
    // An unknown level is an error naming the variable and the accepted values.
    let o = muddit_isa("avx1024", &bench, dir);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("MUDDIT_ISA") && e.contains("avx512bf16"), "{e}");
    // -v names the choice on stderr.
    let o = muddit(
        &[
            "-v", "--model", "model", "bench", "--width", "64", "--height", "64", "--steps", "1",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("cpu kernels: f32: "), "{}", stderr(&o));
}
