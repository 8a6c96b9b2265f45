//! The `muddit debug` commands, run as a user runs them: the real binary in a temporary folder.

mod common;

use common::{muddit, stderr};
use muddit_engine::tensor_io::TensorFile;

#[test]
fn random_checkpoint_inputs_and_forward_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
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
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("model/transformer/config.json").is_file());
    assert!(dir
        .join("model/transformer/diffusion_pytorch_model.safetensors")
        .is_file());

    let o = muddit(
        &[
            "--model",
            "model",
            "debug",
            "random-inputs",
            "--batch",
            "2",
            "--grid",
            "8",
            "--out",
            "in.safetensors",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = muddit(
        &[
            "--model",
            "model/transformer",
            "debug",
            "forward",
            "--inputs",
            "in.safetensors",
            "--out",
            "out.safetensors",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
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
    let o = muddit(
        &[
            "--model",
            "model",
            "debug",
            "forward",
            "--inputs",
            "in.safetensors",
            "--out",
            "out.safetensors",
        ],
        dir,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert_eq!(
        before,
        std::fs::read(dir.join("out.safetensors")).expect("read")
    );
    let o = muddit(
        &[
            "debug",
            "random-checkpoint",
            "--preset",
            "tiny",
            "--out",
            "model",
        ],
        dir,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    // Same inputs, same weights: the same logits, whatever the thread count.
    let o = muddit(
        &[
            "--threads",
            "1",
            "--model",
            "model",
            "debug",
            "forward",
            "--inputs",
            "in.safetensors",
            "--out",
            "out1.safetensors",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
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
    let o = muddit(
        &[
            "debug",
            "forward",
            "--inputs",
            "in.safetensors",
            "--out",
            "out.safetensors",
        ],
        dir,
    );
    // No --model: the default model is used, and the missing inputs file is named.
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("in.safetensors"), "{}", stderr(&o));

    let o = muddit(
        &[
            "--model",
            "nowhere",
            "debug",
            "forward",
            "--inputs",
            "in.safetensors",
            "--out",
            "o.safetensors",
        ],
        dir,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nowhere"), "{}", stderr(&o));

    let o = muddit(
        &[
            "debug",
            "random-checkpoint",
            "--preset",
            "huge",
            "--out",
            "m",
        ],
        dir,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("muddit-512"), "{}", stderr(&o));

    let o = muddit(
        &[
            "debug",
            "random-checkpoint",
            "--preset",
            "tiny",
            "--out",
            "m",
            "-q",
        ],
        dir,
    );
    assert!(o.status.success());
    std::fs::write(dir.join("in.safetensors"), b"not a tensor file").expect("write");
    let o = muddit(
        &[
            "--model",
            "m",
            "debug",
            "forward",
            "--inputs",
            "in.safetensors",
            "--out",
            "o.safetensors",
        ],
        dir,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("in.safetensors"), "{}", stderr(&o));
}
