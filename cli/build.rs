//! Builds the default model (`models/shapes-64/`) and the default evaluation set
//! (`models/shapes-eval/`) into the binary: writes `$OUT_DIR/embedded.rs`, one
//! [`Embedded`](crate::embedded::Embedded) per folder listing every file as `include_bytes!`,
//! with a SHA-256 digest of the names and contents that names the folder it unpacks to.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn embed(code: &mut String, konst: &str, name: &str, dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut paths = Vec::new();
    files(dir, &mut paths);
    paths.sort();
    let mut digest = Sha256::new();
    let mut list = String::new();
    for path in &paths {
        let rel = path.strip_prefix(dir).expect("under the folder");
        let rel = rel
            .iter()
            .map(|c| c.to_str().expect("a UTF-8 file name"))
            .collect::<Vec<_>>()
            .join("/");
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        digest.update((rel.len() as u64).to_le_bytes());
        digest.update(rel.as_bytes());
        digest.update((bytes.len() as u64).to_le_bytes());
        digest.update(&bytes);
        let abs = path.to_str().expect("a UTF-8 path");
        writeln!(list, "        ({rel:?}, include_bytes!({abs:?})),").unwrap();
    }
    let hex: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    writeln!(
        code,
        "pub static {konst}: Embedded = Embedded {{\n    name: {name:?},\n    digest: {hex:?},\n    files: &[\n{list}    ],\n}};"
    )
    .unwrap();
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let mut code = String::new();
    embed(
        &mut code,
        "DEFAULT_MODEL",
        "shapes-64",
        &models.join("shapes-64"),
    );
    embed(
        &mut code,
        "DEFAULT_SET",
        "shapes-eval",
        &models.join("shapes-eval"),
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("embedded.rs");
    std::fs::write(&out, code).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}
