//! Running the real `muddit` binary from the CLI tests.

use std::path::Path;
use std::process::{Command, Output};

/// `muddit ARGS` in `cwd`, with no `MUDDIT_MODEL` from the environment, and the built-in default
/// model unpacked under the target folder rather than the user's cache.
#[allow(dead_code)] // used by some test binaries only
pub fn muddit(args: &[&str], cwd: &Path) -> Output {
    command(args, cwd).output().expect("spawn muddit")
}

fn command<S: AsRef<std::ffi::OsStr>>(args: &[S], cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_muddit"));
    c.args(args)
        .current_dir(cwd)
        .env_remove("MUDDIT_MODEL")
        .env(
            "XDG_CACHE_HOME",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/cache"),
        );
    c
}

/// The words of `line` as a shell splits them (`'a red circle'` is one).
fn words(line: &str) -> Vec<String> {
    shlex::split(line).unwrap_or_else(|| panic!("unbalanced quotes in {line:?}"))
}

/// `muddit LINE` in `cwd`, the line split as a shell would (`'a red circle'` is one argument).
#[allow(dead_code)] // used by some test binaries only
pub fn run(line: &str, cwd: &Path) -> Output {
    command(&words(line), cwd).output().expect("spawn muddit")
}

/// [`run`] with one more environment variable set.
#[allow(dead_code)] // used by some test binaries only
pub fn run_with_env(line: &str, cwd: &Path, (key, value): (&str, &str)) -> Output {
    command(&words(line), cwd)
        .env(key, value)
        .output()
        .expect("spawn muddit")
}

/// Asserts that `o` is a user error (exit code 2) whose message contains every one of `needles`.
#[allow(dead_code)] // used by some test binaries only
pub fn fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

/// Asserts that `o` succeeded, showing its stderr otherwise.
#[allow(dead_code)] // used by some test binaries only
pub fn succeeds(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

/// Asserts that `o` succeeded and returns its stdout read as JSON.
#[allow(dead_code)] // used by some test binaries only
pub fn json_output(o: &Output) -> serde_json::Value {
    succeeds(o);
    let out = stdout(o);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: not JSON: {out}"))
}

/// The bytes of file `name` in `dir`.
#[allow(dead_code)] // used by some test binaries only
pub fn bytes(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
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
