//! The `muddit debug` commands, run as a user runs them: the real binary in a temporary folder.

mod common;

use common::{fails_with, run, succeeds};
use muddit_engine::tensor_io::TensorFile;

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
