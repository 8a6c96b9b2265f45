//! `muddit t2i` edits on the default model as a user runs them: img2img (`--init-image`,
//! `--strength`), inpainting (`--mask`), outpainting (`--outpaint`), the paste-back
//! (`--[no-]keep-unmasked-pixels`, `--mask-blur`),
//! a seed per image, `--from-png` redoing an edit and refusing a changed input, the
//! `parameters` text chunk, and every user error.

mod common;

use common::{edit_inputs, encoding, muddit, output_ids as ids, stderr, stdout, EVAL_IMAGE};
use std::path::Path;

/// A folder with the edit inputs (`common::edit_inputs`).
fn inputs() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    edit_inputs(tmp.path());
    tmp
}

fn run_ok(args: &[&str], dir: &Path) -> std::process::Output {
    let o = muddit(args, dir);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    o
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `parameters` text chunk of a PNG.
fn parameters(path: &Path) -> String {
    let file = std::fs::File::open(path).expect("png");
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("a PNG");
    let text = &reader.info().uncompressed_latin1_text;
    let chunk = text.iter().find(|c| c.keyword == "parameters");
    chunk.expect("a `parameters` chunk").text.clone()
}

#[test]
fn inpainting_keeps_the_unmasked_tokens_and_from_png_redoes_it() {
    let tmp = inputs();
    let dir = tmp.path();
    // A tiny strength returns the encoding itself.
    let (shape, encoded) = encoding(dir, &[], "in.png", "enc.st");
    assert_eq!(shape, [1, 8, 8]);
    let o = run_ok(
        &[
            "t2i",
            "-i",
            "in.png",
            "--mask",
            "mask.png",
            "--prompt",
            "a green square to the left of a blue circle",
            "--negative-prompt",
            "a red circle",
            "--cfg",
            "3",
            "--batch",
            "2",
            "--seed",
            "40",
            "-o",
            "inp-%d.png",
            "--output-ids",
            "inp.st",
            "--steps",
            "8",
        ],
        dir,
    );
    let err = stderr(&o);
    assert!(
        err.contains("(seed 40)") && err.contains("(seed 41)"),
        "{err}"
    );
    let (shape, got) = ids(&dir.join("inp.st"));
    assert_eq!(shape, [2, 8, 8]);
    for (i, (&g, &e)) in got.iter().zip(encoded.iter().cycle()).enumerate() {
        if i % 8 >= 4 {
            assert_eq!(g, e, "unmasked token {i}");
        }
    }
    assert_ne!(got[..64], encoded[..], "the masked half was regenerated");
    let text = parameters(&dir.join("inp-1.png"));
    assert!(
        text.starts_with(
            "a green square to the left of a blue circle\nNegative prompt: a red circle\nSteps: 8,"
        ),
        "{text}"
    );
    for part in [
        "CFG scale: 3",
        "Seed: 41",
        "Size: 64x64",
        "Model: shapes-64",
        "Denoising strength: 1",
        "Mask: yes",
        "Model hash: ",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    // --from-png redoes image 1 alone, mask and all: the same PNG.
    run_ok(
        &["t2i", "--from-png", "inp-1.png", "-o", "again.png", "-q"],
        dir,
    );
    assert_eq!(read(&dir.join("inp-1.png")), read(&dir.join("again.png")));

    // A changed input is reported, not used; named explicitly, it is used.
    std::fs::copy(dir.join("crop.png"), dir.join("mask.png")).expect("change the mask");
    let o = muddit(
        &["t2i", "--from-png", "inp-1.png", "-o", "b.png", "-q"],
        dir,
    );
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("mask.png") && err.contains("changed since"),
        "{err}"
    );
    std::fs::remove_file(dir.join("in.png")).expect("remove");
    let o = muddit(
        &["t2i", "--from-png", "inp-1.png", "-o", "b.png", "-q"],
        dir,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("in.png") && stderr(&o).contains("gone"),
        "{}",
        stderr(&o)
    );
    std::fs::copy(EVAL_IMAGE, dir.join("other.png")).expect("copy");
    let right =
        image::GrayImage::from_fn(64, 64, |x, _| image::Luma([if x < 32 { 0 } else { 255 }]));
    right.save(dir.join("right.png")).expect("mask");
    run_ok(
        &[
            "t2i",
            "--from-png",
            "inp-1.png",
            "-i",
            "other.png",
            "--mask",
            "right.png",
            "-o",
            "b.png",
            "-q",
        ],
        dir,
    );
}

#[test]
fn img2img_and_outpainting_write_the_asked_sizes() {
    let tmp = inputs();
    let dir = tmp.path();
    let prompt = "a red circle to the left of a blue circle";
    run_ok(
        &[
            "t2i",
            "-i",
            "in.png",
            "--prompt",
            prompt,
            "--seed",
            "3",
            "-o",
            "i2i.png",
            "--output-ids",
            "i2i.st",
            "-q",
        ],
        dir,
    );
    let text = parameters(&dir.join("i2i.png"));
    assert!(
        text.contains("Denoising strength: 0.6"),
        "the img2img default: {text}"
    );
    run_ok(
        &["t2i", "--from-png", "i2i.png", "-o", "i2i-again.png", "-q"],
        dir,
    );
    assert_eq!(read(&dir.join("i2i.png")), read(&dir.join("i2i-again.png")));

    // The crop's own encoding, then the crop grown by 32 px on the right.
    let (shape, crop_ids) = encoding(dir, &[], "crop.png", "crop.st");
    assert_eq!(shape, [1, 8, 4]);
    run_ok(
        &[
            "t2i",
            "-i",
            "crop.png",
            "--outpaint",
            "0,0,20,0",
            "--prompt",
            prompt,
            "--seed",
            "3",
            "-o",
            "out.png",
            "--output-ids",
            "out.st",
            "-q",
        ],
        dir,
    );
    let img = image::open(dir.join("out.png")).expect("png").to_rgb8();
    assert_eq!(
        (img.width(), img.height()),
        (64, 64),
        "20 px round up to 32"
    );
    let (shape, out) = ids(&dir.join("out.st"));
    assert_eq!(shape, [1, 8, 8]);
    for (i, &id) in crop_ids.iter().enumerate() {
        assert_eq!(out[(i / 4) * 8 + i % 4], id, "old token {i}");
    }
    assert!(parameters(&dir.join("out.png")).contains("Outpaint: 0,0,32,0"));

    // The crop's pixels are pasted back exactly by default; --no-keep-unmasked-pixels leaves
    // the decoder's.
    let kept = image::open(dir.join("out.png")).expect("png").to_rgb8();
    let crop = image::open(dir.join("crop.png")).expect("png").to_rgb8();
    for (x, y, p) in crop.enumerate_pixels() {
        assert_eq!(kept.get_pixel(x, y), p, "pixel {x},{y}");
    }
    let o = [
        "t2i",
        "-i",
        "crop.png",
        "--outpaint",
        "0,0,32,0",
        "--prompt",
        prompt,
        "--seed",
        "3",
        "-q",
        "-o",
    ];
    run_ok(
        &[&o[..], &["decoded.png", "--no-keep-unmasked-pixels"]].concat(),
        dir,
    );
    let decoded = image::open(dir.join("decoded.png")).expect("png").to_rgb8();
    assert!(
        crop.enumerate_pixels()
            .any(|(x, y, p)| decoded.get_pixel(x, y) != p),
        "without the paste-back the decoder redraws the crop"
    );
    for (x, y, p) in decoded.enumerate_pixels().filter(|(x, ..)| *x >= 32) {
        assert_eq!(kept.get_pixel(x, y), p, "the new part is the same: {x},{y}");
    }
    // --mask-blur feathers the seam over 3 sigma on each side, no further.
    run_ok(&[&o[..], &["blur.png", "--mask-blur", "2"]].concat(), dir);
    let blur = image::open(dir.join("blur.png")).expect("png").to_rgb8();
    assert!(parameters(&dir.join("blur.png")).contains("Mask blur: 2"));
    let mut seam_differs = false;
    for (x, y, p) in blur.enumerate_pixels() {
        match x {
            ..26 => assert_eq!(p, crop.get_pixel(x, y), "kept far from the seam: {x},{y}"),
            38.. => assert_eq!(p, decoded.get_pixel(x, y), "new far from the seam: {x},{y}"),
            _ => seam_differs |= p != kept.get_pixel(x, y),
        }
    }
    assert!(seam_differs, "the seam is blended");
    // A blur too narrow to reach the next pixel pastes back as no blur does.
    run_ok(
        &[&o[..], &["thin.png", "--mask-blur", "1e-30"]].concat(),
        dir,
    );
    let thin = image::open(dir.join("thin.png")).expect("png").to_rgb8();
    assert!(thin == kept, "--mask-blur 1e-30 pastes the crop back");
    // --width/--height resize the input inside the pads.
    run_ok(
        &[
            "t2i",
            "-i",
            "in.png",
            "--outpaint",
            "16,0,0,0",
            "--width",
            "64",
            "--prompt",
            prompt,
            "-o",
            "w.png",
            "-q",
        ],
        dir,
    );
    let img = image::open(dir.join("w.png")).expect("png").to_rgb8();
    assert_eq!((img.width(), img.height()), (64, 64));
}

#[test]
fn seeds_are_per_image_and_minus_one_is_a_new_one() {
    let tmp = inputs();
    let dir = tmp.path();
    let o = run_ok(
        &[
            "--json",
            "t2i",
            "--prompt",
            "a red circle",
            "--seed",
            "-1",
            "-o",
            "r.png",
        ],
        dir,
    );
    let err = stderr(&o);
    assert!(err.contains("seed: "), "the new seed is printed: {err}");
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let seed = report["images"][0]["seed"].as_u64().expect("a seed");
    assert!(parameters(&dir.join("r.png")).contains(&format!("Seed: {seed},")));
    let o = run_ok(
        &[
            "--json", "t2i", "--prompt", "a", "--prompt", "b", "--seed", "9", "-o", "s-%d.png",
            "-q",
        ],
        dir,
    );
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let seeds: Vec<u64> = (0..2)
        .map(|i| report["images"][i]["seed"].as_u64().expect("seed"))
        .collect();
    assert_eq!(seeds, [9, 10]);
    // Image 1 alone with its own seed is image 1 of the batch.
    run_ok(
        &[
            "t2i",
            "--prompt",
            "b",
            "--seed",
            "10",
            "-o",
            "alone.png",
            "--output-ids",
            "alone.st",
            "-q",
        ],
        dir,
    );
    run_ok(
        &[
            "t2i",
            "--prompt",
            "a",
            "--prompt",
            "b",
            "--seed",
            "9",
            "-o",
            "t-%d.png",
            "--output-ids",
            "both.st",
            "-q",
        ],
        dir,
    );
    let (_, both) = ids(&dir.join("both.st"));
    let (_, alone) = ids(&dir.join("alone.st"));
    assert_eq!(both[64..], alone[..]);
}

#[test]
fn edit_errors_exit_2_and_name_the_argument() {
    let tmp = inputs();
    let dir = tmp.path();
    let black = image::GrayImage::new(64, 64);
    black.save(dir.join("black.png")).expect("black");
    std::fs::write(dir.join("junk.png"), b"not an image").expect("junk");
    image::GrayImage::new(4112, 16)
        .save(dir.join("wide.png"))
        .expect("wide");
    let p = ["--prompt", "a red circle", "-o", "e.png"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--mask", "mask.png"], "need --init-image"),
        (vec!["--outpaint", "0,0,32,0"], "need --init-image"),
        (vec!["-i", "missing.png"], "missing.png"),
        (vec!["-i", "junk.png"], "junk.png"),
        (vec!["-i", "in.png", "--strength", "0"], "--strength 0"),
        (vec!["-i", "in.png", "--strength", "1.5"], "--strength 1.5"),
        (vec!["-i", "in.png", "--outpaint", "1,2"], "--outpaint 1,2"),
        (
            vec!["-i", "in.png", "--outpaint", "a,b,c,d"],
            "--outpaint a,b,c,d",
        ),
        (
            vec!["-i", "in.png", "--mask", "black.png"],
            "--mask black.png: no white (or transparent) pixel",
        ),
        (
            vec!["-i", "in.png", "--keep-unmasked-pixels"],
            "--keep-unmasked-pixels",
        ),
        (
            vec!["-i", "in.png", "--mask", "mask.png", "--mask-blur", "-1"],
            "--mask-blur -1",
        ),
        (
            vec![
                "-i",
                "in.png",
                "--mask",
                "mask.png",
                "--no-keep-unmasked-pixels",
                "--mask-blur",
                "2",
            ],
            "--mask-blur 2",
        ),
        (vec!["--mask-blur", "2"], "need --init-image"),
        (
            vec!["-i", "in.png", "--outpaint", "32,0,32,0", "--width", "64"],
            "--width 64",
        ),
        (vec!["-i", "in.png", "--width", "40"], "40"),
        (
            vec!["-i", "in.png", "--outpaint", "18446744073709551615,0,0,0"],
            "--outpaint 18446744073709551615 px: a pad cannot be larger",
        ),
        (
            vec!["-i", "in.png", "--outpaint", "0,0,18446744073709551600,32"],
            "--outpaint 18446744073709551600 px",
        ),
        (
            vec!["-i", "in.png", "--outpaint", "4096,0,0,0"],
            "--outpaint 4096,0,0,0: the canvas width: 4160 px is outside",
        ),
        (
            vec!["-i", "wide.png"],
            "--init-image wide.png: its width: 4112 px is outside",
        ),
        (vec!["--seed", "-2"], "-2"),
    ];
    for (extra, want) in cases {
        let args = [&["t2i"][..], &extra, &p].concat();
        let o = muddit(&args, dir);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(want),
            "{args:?}: want {want:?} in {}",
            stderr(&o)
        );
        assert!(!dir.join("e.png").exists(), "{args:?}: nothing written");
    }
}
