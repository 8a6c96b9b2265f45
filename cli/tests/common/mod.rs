//! Running the real `muddit` binary from the CLI tests.

use std::path::Path;
use std::process::{Command, Output};

/// `muddit ARGS` in `cwd`, with no `MUDDIT_MODEL` from the environment.
#[allow(dead_code)] // used by some test binaries only
pub fn muddit(args: &[&str], cwd: &Path) -> Output {
    command(args, cwd).output().expect("spawn muddit")
}

fn command<S: AsRef<std::ffi::OsStr>>(args: &[S], cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_muddit"));
    c.args(args).current_dir(cwd).env_remove("MUDDIT_MODEL");
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
