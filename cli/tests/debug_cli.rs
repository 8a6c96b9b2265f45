//! The `muddit debug` commands, run as a user runs them: the real binary in a temporary folder.

mod common;

use common::{fails_with, run, succeeds};
use muddit_engine::tensor_io::{HostTensor, TensorFile};

#[test]
fn random_checkpoint_inputs_and_forward_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let o = run("debug random-checkpoint --preset tiny --out model -q", dir);
    succeeds(&o);
    assert!(dir.join("model/transformer/config.json").is_file());
    assert!(dir
        .join("model/transformer/diffusion_pytorch_model.safetensors")
        .is_file());

    let o = run(
        "--model model debug random-inputs --batch 2 --grid 8 --out in.safetensors",
        dir,
    );
    succeeds(&o);
    let o = run(
        "--model model/transformer debug forward --inputs in.safetensors --out out.safetensors",
        dir,
    );
    succeeds(&o);
    let out = TensorFile::read(&dir.join("out.safetensors")).expect("read outputs");
    assert_eq!(
        out.get("image_logits").expect("image_logits").shape,
        vec![2, 64, 8, 8]
    );
    assert_eq!(
        out.get("text_logits").expect("text_logits").shape,
        vec![2, 77, 1001]
    );

    // Nothing is overwritten without being asked.
    let before = std::fs::read(dir.join("out.safetensors")).expect("read");
    let o = run(
        "--model model debug forward --inputs in.safetensors --out out.safetensors",
        dir,
    );
    fails_with(&o, &["--overwrite"]);
    assert_eq!(
        before,
        std::fs::read(dir.join("out.safetensors")).expect("read")
    );
    let o = run("debug random-checkpoint --preset tiny --out model", dir);
    fails_with(&o, &["already exists"]);

    // Same inputs, same weights: the same logits, whatever the thread count.
    let o = run(
        "--threads 1 --model model debug forward --inputs in.safetensors --out out1.safetensors",
        dir,
    );
    succeeds(&o);
    let a = TensorFile::read(&dir.join("out.safetensors")).expect("read");
    let b = TensorFile::read(&dir.join("out1.safetensors")).expect("read");
    let (x, y) = (
        a.get("image_logits").expect("a"),
        b.get("image_logits").expect("b"),
    );
    assert_eq!(
        x, y,
        "one thread and all threads must give identical logits"
    );
}

#[test]
fn user_errors_exit_2_with_a_clear_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let o = run(
        "debug forward --inputs in.safetensors --out out.safetensors",
        dir,
    );
    // No --model: the default model is used, and the missing inputs file is named.
    fails_with(&o, &["in.safetensors"]);

    let o = run(
        "--model nowhere debug forward --inputs in.safetensors --out o.safetensors",
        dir,
    );
    fails_with(&o, &["nowhere"]);

    let o = run("debug random-checkpoint --preset huge --out m", dir);
    fails_with(&o, &["muddit-512"]);

    let o = run("debug random-checkpoint --preset tiny --out m -q", dir);
    assert!(o.status.success());
    std::fs::write(dir.join("in.safetensors"), b"not a tensor file").expect("write");
    let o = run(
        "--model m debug forward --inputs in.safetensors --out o.safetensors",
        dir,
    );
    fails_with(&o, &["in.safetensors"]);
}

/// The files under `dir` with their bytes.
fn files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("ls").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).expect("read")));
        }
    }
    out.sort();
    out
}

/// `debug random-checkpoint` checks everything before it writes: a folder holding any part of
/// a model folder, a `--clip-bpe` that is missing or of the wrong size and a `--shard-mib` too
/// large to count in bytes are refused by name with nothing written.
#[test]
fn random_checkpoint_checks_everything_before_writing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    for part in [
        "vqvae/diffusion_pytorch_model.safetensors",
        "mask_token_embedding.pth",
    ] {
        let partial = dir.join("partial");
        let file = partial.join(part);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, b"precious").expect("write");
        let before = files(&partial);
        let o = run("debug random-checkpoint --preset tiny --out partial", dir);
        let first = part.split('/').next().expect("entry");
        fails_with(
            &o,
            &[&format!("partial/{first}"), "already exists", "--overwrite"],
        );
        assert_eq!(files(&partial), before, "{part}");
        std::fs::remove_dir_all(&partial).expect("rm");
    }
    std::fs::write(dir.join("bpe.txt"), "#version: 0.2\na b\n").expect("write");
    for (flags, words) in [
        (
            "--clip-bpe nowhere.txt.gz",
            &["--clip-bpe", "nowhere.txt.gz"][..],
        ),
        (
            "--clip-bpe bpe.txt",
            &["--clip-bpe", "bpe.txt", "needs 1000"][..],
        ),
        (
            "--shard-mib 17592186044416",
            &["--shard-mib", "too large"][..],
        ),
    ] {
        let o = run(
            &format!("debug random-checkpoint --preset tiny --out fresh {flags}"),
            dir,
        );
        fails_with(&o, words);
        assert!(!dir.join("fresh").exists(), "{flags}: wrote into --out");
    }
    let o = run(
        "debug random-checkpoint --preset tiny --out sharded --shard-mib 0 -q",
        dir,
    );
    succeeds(&o);
    let transformer = dir.join("sharded/transformer");
    let index = transformer.join("diffusion_pytorch_model.safetensors.index.json");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(index).expect("an index")).expect("json");
    let map = index["weight_map"].as_object().expect("weight_map");
    let shards: std::collections::BTreeSet<_> = map.values().filter_map(|v| v.as_str()).collect();
    assert_eq!(
        shards.len(),
        map.len(),
        "--shard-mib 0: one tensor per shard"
    );
    // --overwrite unsharded: no shard or index of the first write is left to be loaded.
    let o = run(
        "debug random-checkpoint --preset tiny --out sharded --overwrite -q",
        dir,
    );
    succeeds(&o);
    let mut names: Vec<_> = std::fs::read_dir(&transformer)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["config.json", "diffusion_pytorch_model.safetensors"],
        "the transformer folder holds the second write only"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let weights = transformer.join("diffusion_pytorch_model.safetensors");
        let mode = std::fs::metadata(weights)
            .expect("weights")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o644,
            "weights are readable like the other files"
        );
    }
}

/// Writes `tensors` as the safetensors file `name` in `dir`.
fn write_inputs(dir: &std::path::Path, name: &str, tensors: Vec<(&str, HostTensor)>) {
    let map = tensors
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    muddit_engine::tensor_io::write(&dir.join(name), &map).expect("write inputs");
}

/// Sizes out of range are refused by the flag or tensor that gives them, before any
/// allocation: no abort, no empty tensors, no wrapped sizes blamed on another file.
#[test]
fn sizes_of_debug_inputs_are_bounded_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    for (flags, name) in [
        ("--grid 1000000", "--grid"),
        ("--grid 4294967296 --batch 1", "--grid"),
        ("--grid 0", "--grid"),
        ("--grid 4 --text-len 100000000000", "--text-len"),
        ("--text-len 0", "--text-len"),
        ("--batch 0", "--batch"),
        ("--batch 100000", "--batch"),
    ] {
        let o = run(&format!("debug random-inputs --out r.st {flags}"), dir);
        fails_with(&o, &[name, "outside"]);
        assert!(!dir.join("r.st").exists(), "{flags}: wrote r.st");
    }
    let ids = |b: usize, h: usize, w: usize| HostTensor::i64(vec![b, h, w], vec![0; b * h * w]);
    write_inputs(dir, "wide.st", vec![("tokens", ids(1, 1000, 1000))]);
    write_inputs(dir, "none.st", vec![("tokens", ids(0, 4, 4))]);
    for (file, words) in [
        ("wide.st", &["wide.st", "`tokens`", "8000 px", "4096"][..]),
        ("none.st", &["none.st", "`tokens`", "0 images"][..]),
    ] {
        let o = run(&format!("debug vq-decode --inputs {file} --out d.st"), dir);
        fails_with(&o, words);
        assert!(!dir.join("d.st").exists(), "{file}: wrote d.st");
    }
}

/// NaN or infinite inputs are refused by the tensor that holds them, not turned into NaN
/// outputs.
#[test]
fn non_finite_debug_inputs_are_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let o = run("debug random-inputs --batch 1 --grid 4 --out in.st -q", dir);
    succeeds(&o);
    let good = TensorFile::read(&dir.join("in.st")).expect("inputs");
    let poisoned = |name: &str, value: f32| -> Vec<(&str, HostTensor)> {
        good.names()
            .map(|n| {
                let t = good.get(n).expect("tensor");
                let len = t.shape.iter().product();
                match n == name {
                    true => (n, HostTensor::f32(t.shape.clone(), vec![value; len])),
                    false => (n, t.clone()),
                }
            })
            .collect()
    };
    for (name, value) in [
        ("micro_conds", f32::INFINITY),
        ("encoder_hidden_states", f32::NAN),
        ("pooled_projections", f32::NEG_INFINITY),
    ] {
        write_inputs(dir, "bad.st", poisoned(name, value));
        let o = run("debug forward --inputs bad.st --out out.st", dir);
        fails_with(&o, &["bad.st", &format!("`{name}`"), "finite"]);
        assert!(!dir.join("out.st").exists(), "{name}: wrote out.st");
    }
    let image = HostTensor::f32(vec![1, 3, 64, 64], vec![f32::NAN; 3 * 64 * 64]);
    write_inputs(dir, "img.st", vec![("image", image)]);
    let o = run("debug vq-encode --inputs img.st --out ids.st", dir);
    fails_with(&o, &["img.st", "`image`", "finite"]);
    assert!(!dir.join("ids.st").exists());
}

/// `--dtype` reaches the side commands: the VQ decode in bf16 products is the f32 decode to
/// bf16 rounding, not the same bits (before, the flag was accepted and f32 ran).
#[test]
fn side_commands_compute_in_the_dtype_asked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    succeeds(&run(
        "debug random-checkpoint --preset tiny --out model -q",
        dir,
    ));
    let ids = (0..16).map(|i| i % 7).collect();
    write_inputs(
        dir,
        "t.st",
        vec![("tokens", HostTensor::i64(vec![1, 4, 4], ids))],
    );
    let image = |dtype: &str| {
        let out = format!("{dtype}.st");
        let o = run(
            &format!("--dtype {dtype} --model model debug vq-decode --inputs t.st --out {out} -q"),
            dir,
        );
        succeeds(&o);
        let file = TensorFile::read(&dir.join(out)).expect("read image");
        let (_, values) = file.f32("image", 4, "[B,3,H,W]").expect("image");
        values.to_vec()
    };
    let (f32s, bf16s) = (image("f32"), image("bf16"));
    assert_ne!(f32s, bf16s, "--dtype bf16 decoded with f32 products");
    let err: f64 = f32s
        .iter()
        .zip(&bf16s)
        .map(|(a, b)| (a - b) as f64 * (a - b) as f64)
        .sum();
    let norm: f64 = f32s.iter().map(|a| *a as f64 * *a as f64).sum();
    let rel = (err / norm).sqrt();
    assert!(rel < 5e-2, "bf16 decode {rel} away from the f32 one");
}
