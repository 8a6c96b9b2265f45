//! The CLI's device path end to end (`--device emulated`: the CUDA backend on the CPU emulator
//! of its kernels, builds with the `emulate` feature) against `--device cpu`, on the decisive
//! fixture model, whose greedy draws are far from ties (`tests/fixtures/decisive/README.md`):
//! `t2i` gives the CPU's ids and, through the device VQ decoder, its images within bf16
//! rounding; `caption` and `vqa` give the CPU's texts; `bench` runs. Run with
//! `cargo test --release -p muddit-cli --features emulate --test device_cli`.
#![cfg(feature = "emulate")]

mod common;

use common::{muddit, stderr, stdout};
use std::path::{Path, PathBuf};

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/decisive/model")
}

fn eval_image(i: usize) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../models/shapes-eval/images/{i:03}.png"))
        .display()
        .to_string()
}

/// The `ids` tensor of a `--output-ids` file.
fn ids(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("ids file");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    file.tensor("ids").expect("ids").data().to_vec()
}

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).expect("png").to_rgb8().into_raw()
}

#[test]
fn t2i_on_the_device_gives_the_cpu_ids_and_images() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let model = model().display().to_string();
    for device in ["cpu", "emulated"] {
        let (png, ids) = (format!("{device}-%d.png"), format!("{device}.safetensors"));
        let o = muddit(
            &[
                "--model",
                &model,
                "--device",
                device,
                "t2i",
                "--prompt",
                "a yellow circle to the left of a white square",
                "--prompt",
                "a blue square at the top",
                "--greedy",
                "--output",
                &png,
                "--output-ids",
                &ids,
            ],
            dir,
        );
        assert!(o.status.success(), "{device}: {}", stderr(&o));
    }
    assert_eq!(
        ids(&dir.join("emulated.safetensors")),
        ids(&dir.join("cpu.safetensors")),
        "image ids"
    );
    for i in 0..2 {
        let (gpu, cpu) = (
            pixels(&dir.join(format!("emulated-{i}.png"))),
            pixels(&dir.join(format!("cpu-{i}.png"))),
        );
        assert_eq!(gpu.len(), cpu.len());
        let diff: Vec<i32> = gpu
            .iter()
            .zip(&cpu)
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .collect();
        let worst = diff.iter().max().copied().unwrap_or(0);
        let mean = diff.iter().sum::<i32>() as f64 / diff.len() as f64;
        println!("image {i}: device vs CPU pixels, max diff {worst} / 255, mean {mean:.3}");
        // The device VQ decoder in bf16 (`cuda_pipeline_checks`: max abs 5e-2 of the range);
        // bit-identical images would mean the CPU decoder ran.
        assert!(
            worst <= 13 && mean <= 1.0,
            "image {i}: max {worst}, mean {mean}"
        );
        assert!(
            worst > 0,
            "image {i}: the CPU's pixels exactly, not the device decoder's"
        );
    }
}

#[test]
fn caption_vqa_and_bench_on_the_device_give_the_cpu_texts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let model = model().display().to_string();
    let (a, b) = (eval_image(0), eval_image(1));
    let texts = |device: &str, command: &[&str]| {
        let mut args = vec!["--model", &model, "--device", device];
        args.extend(command);
        let o = muddit(&args, dir);
        assert!(o.status.success(), "{device} {command:?}: {}", stderr(&o));
        if device == "emulated" {
            assert!(stderr(&o).contains("device: "), "{}", stderr(&o));
        }
        stdout(&o)
    };
    for command in [
        vec!["caption", "--greedy", "--steps", "4", &a, &b],
        vec![
            "vqa",
            "--greedy",
            "--steps",
            "4",
            "--question",
            "how many shapes are there?",
            &a,
            &b,
        ],
    ] {
        let cpu = texts("cpu", &command);
        assert_eq!(cpu.lines().count(), 2, "{cpu}");
        assert_eq!(texts("emulated", &command), cpu, "{command:?}");
    }
    let bench = texts(
        "emulated",
        &["bench", "--width", "64", "--height", "64", "--steps", "2"],
    );
    assert!(bench.contains("step"), "{bench}");
}
