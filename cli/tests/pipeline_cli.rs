//! `muddit t2i`, `caption`, `vqa` and `bench` run as a user runs them, on a random tiny model.

mod common;

use common::{bytes, fails_with, json_output, run, run_with_env, stderr, stdout, succeeds};
use muddit_engine::tensor_io::{TensorFile, Values};

/// A temporary folder holding a random tiny model at `model/`.
fn with_model() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = run(
        "debug random-checkpoint --preset tiny --out model -q",
        tmp.path(),
    );
    succeeds(&o);
    tmp
}

const T2I: &str = "--model model t2i --width 64 --height 64 --steps 3";

/// `muddit T2I -q EXTRA` in `dir`.
fn t2i(dir: &std::path::Path, extra: &str) -> std::process::Output {
    run(&format!("{T2I} -q {extra}"), dir)
}

#[test]
fn t2i_writes_png_and_ids_and_from_png_reproduces_it() {
    let tmp = with_model();
    let dir = tmp.path();
    succeeds(&t2i(
        dir,
        "--prompt 'a red circle' --seed 11 --output a.png --output-ids ids.safetensors",
    ));
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

    let o = run("t2i --from-png a.png --output b.png -q", dir);
    succeeds(&o);
    assert_eq!(
        bytes(dir, "a.png"),
        bytes(dir, "b.png"),
        "same parameters, same bytes"
    );

    // Another seed gives another image.
    succeeds(&t2i(
        dir,
        "--prompt 'a red circle' --seed 12 --output c.png",
    ));
    assert_ne!(bytes(dir, "a.png"), bytes(dir, "c.png"));
}

#[test]
fn t2i_batches_need_a_pattern_and_from_png_picks_the_right_image() {
    let tmp = with_model();
    let dir = tmp.path();
    let batch = format!("{T2I} -q --prompt one --prompt two --batch 2 --seed 5");
    let o = run(&format!("{batch} --output x.png"), dir);
    fails_with(&o, &["%d"]);
    let o = run(&format!("{batch} --output x-%d.png"), dir);
    succeeds(&o);
    for i in 0..4 {
        assert!(dir.join(format!("x-{i}.png")).is_file());
    }
    let o = run("t2i --from-png x-2.png --output again.png -q", dir);
    succeeds(&o);
    assert_eq!(bytes(dir, "x-2.png"), bytes(dir, "again.png"));
}

#[test]
fn t2i_greedy_is_deterministic_and_says_what_has_no_effect() {
    let tmp = with_model();
    let dir = tmp.path();
    let t2i = |out: &str, seed: &str| {
        run(
            &format!("{T2I} --prompt 'a cat' --greedy --seed {seed} --output {out}"),
            dir,
        )
    };
    let o = t2i("g1.png", "1");
    succeeds(&o);
    assert!(
        stderr(&o).contains("--seed has no effect"),
        "{}",
        stderr(&o)
    );
    assert!(t2i("g2.png", "2").status.success());
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
    for (out, dtype) in [("b1.png", "bf16"), ("b2.png", "bf16"), ("f.png", "f32")] {
        let o = run(
            &format!("--dtype {dtype} {T2I} -q --prompt 'a cat' --greedy --output {out}"),
            dir,
        );
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
    let cases = [
        (
            "--model model t2i --prompt x --width 60 --height 64 --steps 2",
            "width",
        ),
        ("--model model t2i --width 64 --height 64", "--prompt"),
        (
            "--model model t2i --prompt '  ' --width 64 --height 64",
            "empty",
        ),
        (
            "--model model t2i --prompt x --steps 0 --width 64 --height 64",
            "step",
        ),
        (
            "--model model t2i --prompt x --cfg=-3 --width 64 --height 64",
            "cfg",
        ),
        (
            "--model model t2i --prompt x --temperature 2,abc --width 64 --height 64",
            "abc",
        ),
        (
            "--model model t2i --prompt x --schedule square --width 64 --height 64",
            "square",
        ),
        ("--model model --device cuda t2i --prompt x", "cuda"),
        (
            "--model model --device cuda caption img.png",
            "--device cuda",
        ),
        (
            "--model model --device cuda:0 vqa --question 'what?' img.png",
            "--device cuda:0",
        ),
        ("--model nowhere t2i --prompt x", "nowhere"),
        ("t2i --from-png nothing.png", "nothing.png"),
    ];
    for (line, needle) in cases {
        println!("muddit {line}");
        fails_with(&run(line, dir), &[needle]);
    }
    // An existing output is never overwritten without --overwrite.
    std::fs::write(dir.join("keep.png"), b"precious").expect("write");
    let keep = format!("{T2I} -q --prompt x --output keep.png");
    fails_with(&run(&keep, dir), &["--overwrite"]);
    assert_eq!(bytes(dir, "keep.png"), b"precious");
    assert!(run(&format!("{keep} --overwrite"), dir).status.success());
}

#[test]
fn caption_vqa_and_bench_run() {
    let tmp = with_model();
    let dir = tmp.path();
    succeeds(&t2i(dir, "--prompt x --output img.png --seed 1"));

    let o = run(
        "--model model caption --resolution 64 --steps 2 --cfg 3 img.png img.png",
        dir,
    );
    succeeds(&o);
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

    let o = run("--model model --json vqa --question 'what color is it?' --resolution 64 --steps 2 --greedy img.png", dir);
    let rows = json_output(&o);
    assert_eq!(rows.as_array().map(|a| a.len()), Some(1));

    let o = run(
        "--model model --json bench --width 64 --height 64 --steps 2",
        dir,
    );
    let r = json_output(&o);
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
    let o = run("--model model caption --resolution 64 broken.png", dir);
    fails_with(&o, &["broken.png"]);
    let o = run("--model model caption --resolution 64 missing.png", dir);
    fails_with(&o, &["missing.png"]);

    succeeds(&t2i(dir, "--prompt x --output img.png"));
    let o = run("--model model caption --resolution 60 img.png", dir);
    fails_with(&o, &["60"]);

    std::fs::remove_file(dir.join("model/mask_token_embedding.pth")).expect("rm");
    let o = run("--model model caption --resolution 64 img.png", dir);
    fails_with(&o, &["mask_token_embedding"]);
}

#[test]
fn the_cpu_level_is_named_capped_and_checked() {
    let tmp = with_model();
    let dir = tmp.path();
    let bench = "--model model --json bench --width 64 --height 64 --steps 1";
    let o = run(bench, dir);
    let r = json_output(&o);
    for dtype in ["f32", "bf16"] {
        let level = r["cpu_kernels"][dtype]["isa"].as_str().expect("isa");
        assert!(
            ["portable", "avx2", "avx512", "avx512bf16", "amx"].contains(&level),
            "{r}"
        );
        assert!(r["cpu_kernels"][dtype]["instruction"].is_string(), "{r}");
    }
    // Capped to the portable level, every dtype says so (and still runs).
    let o = run_with_env(bench, dir, ("MUDDIT_ISA", "portable"));
    let r = json_output(&o);
    assert_eq!(r["cpu_kernels"]["bf16"]["isa"], "portable", "{r}");
    assert_eq!(r["cpu_kernels"]["f32"]["instruction"], "gemm crate", "{r}");
    // An unknown level is an error naming the variable and the accepted values.
    let o = run_with_env(bench, dir, ("MUDDIT_ISA", "avx1024"));
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("MUDDIT_ISA") && e.contains("avx512bf16"), "{e}");
    // -v names the choice on stderr.
    let o = run(
        "-v --model model bench --width 64 --height 64 --steps 1",
        dir,
    );
    succeeds(&o);
    assert!(stderr(&o).contains("cpu kernels: f32: "), "{}", stderr(&o));
}
