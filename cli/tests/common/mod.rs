//! Running the real `muddit` binary from the CLI tests.

use std::path::Path;
use std::process::{Command, Output};

/// `muddit ARGS` in `cwd`, with no `MUDDIT_MODEL` from the environment.
pub fn muddit(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_muddit"))
        .args(args)
        .current_dir(cwd)
        .env_remove("MUDDIT_MODEL")
        .output()
        .expect("spawn muddit")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[allow(dead_code)] // used by some test binaries only
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Eval scene 003 of the committed held-out set.
#[allow(dead_code)] // used by the edit tests only
pub const EVAL_IMAGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/shapes-eval/images/003.png"
);

/// Writes the inputs of the edit tests into `dir`: `in.png` (eval scene 003), `mask.png` (its
/// left half white) and `crop.png` (its left 32 columns).
#[allow(dead_code)] // used by the edit tests only
pub fn edit_inputs(dir: &Path) {
    std::fs::copy(EVAL_IMAGE, dir.join("in.png")).expect("copy");
    let mask =
        image::GrayImage::from_fn(64, 64, |x, _| image::Luma([if x < 32 { 255 } else { 0 }]));
    mask.save(dir.join("mask.png")).expect("mask");
    let scene = image::open(EVAL_IMAGE).expect("eval image").to_rgb8();
    let crop = image::imageops::crop_imm(&scene, 0, 0, 32, 64).to_image();
    crop.save(dir.join("crop.png")).expect("crop");
}

/// The ids of an `--output-ids` file: (shape `[B, h, w]`, values).
#[allow(dead_code)] // used by the edit tests only
pub fn output_ids(path: &Path) -> (Vec<usize>, Vec<i64>) {
    use muddit_engine::tensor_io::{TensorFile, Values};
    let file = TensorFile::read(path).expect("ids file");
    let t = file.get("ids").expect("`ids`");
    let Values::I64(v) = &t.values else {
        panic!("ids must be i64")
    };
    (t.shape.clone(), v.clone())
}

/// The ids `muddit [global] t2i` encodes `image` to (a tiny `--strength` returns the encoding),
/// written to `out` in `dir`.
#[allow(dead_code)] // used by the edit tests only
pub fn encoding(dir: &Path, global: &[&str], image: &str, out: &str) -> (Vec<usize>, Vec<i64>) {
    let t2i = [
        "t2i",
        "-i",
        image,
        "--strength",
        "0.001",
        "--prompt",
        "x",
        "-q",
    ];
    let png = format!("{out}.png");
    let tail = ["-o", png.as_str(), "--output-ids", out];
    let args = [global, &t2i[..], &tail[..]].concat();
    let o = muddit(&args, dir);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    output_ids(&dir.join(out))
}
