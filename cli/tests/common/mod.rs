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
