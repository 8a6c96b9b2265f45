//! `muddit t2i` edits on the device path (`--device emulated`: the CUDA backend on the CPU
//! emulator of its kernels, builds with the `emulate` feature): the input is VQ-encoded on the
//! device, and inpainting and outpainting keep the device's encoding of the kept tokens. Run
//! with `cargo test --release -p muddit-cli --features emulate --test edit_device_cli`.
#![cfg(feature = "emulate")]

mod common;

use common::{muddit, stderr};
use std::path::Path;

const EVAL_IMAGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/shapes-eval/images/003.png"
);

/// The `ids` `[B, h, w]` of a `--output-ids` file, as i64.
fn ids(path: &Path) -> Vec<i64> {
    let bytes = std::fs::read(path).expect("ids file");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let data = file.tensor("ids").expect("ids").data().to_vec();
    data.chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect()
}

fn run_ok(args: &[&str], dir: &Path) {
    let o = muddit(args, dir);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
}

#[test]
fn device_inpainting_and_outpainting_keep_the_device_encoding() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::copy(EVAL_IMAGE, dir.join("in.png")).expect("copy");
    let mask =
        image::GrayImage::from_fn(64, 64, |x, _| image::Luma([if x < 32 { 255 } else { 0 }]));
    mask.save(dir.join("mask.png")).expect("mask");
    let scene = image::open(EVAL_IMAGE).expect("eval image").to_rgb8();
    let crop = image::imageops::crop_imm(&scene, 0, 0, 32, 64).to_image();
    crop.save(dir.join("crop.png")).expect("crop");
    let common = [
        "--device", "emulated", "t2i", "--steps", "4", "--seed", "2", "-q",
    ];
    let run = |extra: &[&str]| run_ok(&[&common[..], extra].concat(), dir);
    let prompt = "a green square to the left of a blue circle";
    run(&[
        "-i",
        "in.png",
        "--strength",
        "0.001",
        "--prompt",
        "x",
        "-o",
        "e.png",
        "--output-ids",
        "enc.st",
    ]);
    run(&[
        "-i",
        "in.png",
        "--mask",
        "mask.png",
        "--cfg",
        "3",
        "--negative-prompt",
        "a red circle",
        "--prompt",
        prompt,
        "-o",
        "i.png",
        "--output-ids",
        "inp.st",
    ]);
    let (enc, inp) = (ids(&dir.join("enc.st")), ids(&dir.join("inp.st")));
    assert_eq!((enc.len(), inp.len()), (64, 64));
    for t in (0..64).filter(|t| t % 8 >= 4) {
        assert_eq!(inp[t], enc[t], "unmasked token {t}");
    }
    run(&[
        "-i",
        "crop.png",
        "--strength",
        "0.001",
        "--prompt",
        "x",
        "-o",
        "ce.png",
        "--output-ids",
        "crop.st",
    ]);
    run(&[
        "-i",
        "crop.png",
        "--outpaint",
        "0,0,32,0",
        "--prompt",
        prompt,
        "-o",
        "o.png",
        "--output-ids",
        "out.st",
    ]);
    let (crop, out) = (ids(&dir.join("crop.st")), ids(&dir.join("out.st")));
    assert_eq!((crop.len(), out.len()), (32, 64));
    for (i, &id) in crop.iter().enumerate() {
        assert_eq!(out[(i / 4) * 8 + i % 4], id, "old token {i}");
    }
    let img = image::open(dir.join("o.png")).expect("png").to_rgb8();
    assert_eq!((img.width(), img.height()), (64, 64));
}
