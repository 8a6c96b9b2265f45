//! `muddit t2i` edits on the device path (`--device emulated`: the CUDA backend on the CPU
//! emulator of its kernels, builds with the `emulate` feature): the input is VQ-encoded on the
//! device, and inpainting and outpainting keep the device's encoding of the kept tokens. Run
//! with `cargo test --release -p muddit-cli --features emulate --test edit_device_cli`.
#![cfg(feature = "emulate")]

mod common;

use common::{edit_inputs, encoding, muddit, output_ids, stderr};
use std::path::Path;

fn run_ok(args: &[&str], dir: &Path) {
    let o = muddit(args, dir);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
}

#[test]
fn device_inpainting_and_outpainting_keep_the_device_encoding() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    edit_inputs(dir);
    let device = ["--device", "emulated"];
    let common = [&device[..], &["t2i", "--steps", "4", "--seed", "2", "-q"]].concat();
    let run = |extra: &[&str]| run_ok(&[&common[..], extra].concat(), dir);
    let prompt = "a green square to the left of a blue circle";
    let (_, enc) = encoding(dir, &device, "in.png", "enc.st");
    let guided = [
        "--cfg",
        "3",
        "--negative-prompt",
        "a red circle",
        "--prompt",
        prompt,
    ];
    let mask = [
        "-i",
        "in.png",
        "--mask",
        "mask.png",
        "-o",
        "i.png",
        "--output-ids",
        "inp.st",
    ];
    run(&[&mask[..], &guided[..]].concat());
    let (_, inp) = output_ids(&dir.join("inp.st"));
    assert_eq!((enc.len(), inp.len()), (64, 64));
    for t in (0..64).filter(|t| t % 8 >= 4) {
        assert_eq!(inp[t], enc[t], "unmasked token {t}");
    }
    let (_, crop) = encoding(dir, &device, "crop.png", "crop.st");
    let pads = ["-i", "crop.png", "--outpaint", "0,0,32,0", "-o", "o.png"];
    run(&[&pads[..], &["--prompt", prompt, "--output-ids", "out.st"]].concat());
    let (_, out) = output_ids(&dir.join("out.st"));
    assert_eq!((crop.len(), out.len()), (32, 64));
    for (i, &id) in crop.iter().enumerate() {
        assert_eq!(out[(i / 4) * 8 + i % 4], id, "old token {i}");
    }
    let img = image::open(dir.join("o.png")).expect("png").to_rgb8();
    assert_eq!((img.width(), img.height()), (64, 64));
}
