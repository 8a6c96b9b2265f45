//! Helpers for the workspace-level integration tests in `tests/tests/`.

pub mod cuda_checks;
pub mod cuda_pipeline_checks;
pub mod device;
pub mod edit_checks;
pub mod fuzz;

use muddit_engine::image_io::load_image;
use muddit_engine::pipeline::{EditIds, Pipeline, TextToImage};
use muddit_engine::tensor_io::TensorFile;
use muddit_sampler::{DrawRule, Guidance, SamplerConfig};
use std::path::PathBuf;

/// `tests/fixtures/<rel>` in the workspace.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// The workspace root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Eval image `name` (`models/shapes-eval/images`) at 64 x 64, `[3, 64, 64]` in [0, 1], and
/// its ids `[8, 8]` on `pipe`'s VQ encoder.
pub fn encoded_eval_image(pipe: &Pipeline, name: &str) -> (Vec<f32>, Vec<i64>) {
    let path = repo().join("models/shapes-eval/images").join(name);
    let image = load_image(&path, 64, 64).expect("eval image").data;
    let ids = pipe.vqvae.encode(&image, 1, 64, 64).expect("encode");
    (image, ids)
}

/// The ids `[8, 4]` of the left 32 columns of a 64 x 64 image `[3, 64, 64]` on `pipe`'s VQ
/// encoder.
pub fn encoded_left_half(pipe: &Pipeline, image: &[f32]) -> Vec<i64> {
    // [3, 64, 32]
    let crop: Vec<f32> = image
        .chunks_exact(64)
        .flat_map(|row| row[..32].to_vec())
        .collect();
    pipe.vqvae.encode(&crop, 1, 64, 32).expect("encode")
}

/// `prompts`, one 64 x 64 image each, greedy over `steps` steps, no negative prompt, no edit.
pub fn greedy_request(prompts: &[&str], steps: usize) -> TextToImage {
    let mut sampler = SamplerConfig::new(steps);
    sampler.draw = DrawRule::Greedy;
    TextToImage {
        prompts: prompts.iter().map(|p| p.to_string()).collect(),
        negative_prompt: String::new(),
        images_per_prompt: 1,
        width: 64,
        height: 64,
        sampler,
        edit: None,
    }
}

/// `prompts` x `per_prompt` 64 x 64 images, guided (scale 3) away from the negative prompt
/// "a red circle", over `steps` steps from `seed`.
pub fn guided_request(
    prompts: &[&str],
    per_prompt: usize,
    (steps, seed): (usize, u64),
    edit: Option<EditIds>,
) -> TextToImage {
    TextToImage {
        prompts: prompts.iter().map(|p| p.to_string()).collect(),
        negative_prompt: "a red circle".into(),
        images_per_prompt: per_prompt,
        width: 64,
        height: 64,
        sampler: SamplerConfig {
            guidance: Guidance::Cfg { scale: 3.0 },
            seed,
            ..SamplerConfig::new(steps)
        },
        edit,
    }
}

/// Relative L2 error `|got - want| / |want|`, with the worst element and its index.
pub struct Compare {
    pub rel_l2: f64,
    pub worst_abs: f64,
    pub worst_index: usize,
}

pub fn compare(got: &[f32], want: &[f32]) -> Compare {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let (mut num, mut den, mut worst_abs, mut worst_index) = (0.0f64, 0.0f64, 0.0f64, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = (g as f64 - w as f64).abs();
        num += e * e;
        den += (w as f64) * (w as f64);
        if e > worst_abs || e.is_nan() {
            worst_abs = e;
            worst_index = i;
        }
    }
    Compare {
        rel_l2: (num / den.max(f64::MIN_POSITIVE)).sqrt(),
        worst_abs,
        worst_index,
    }
}

/// The `f32` values of tensor `name` in a fixture file.
pub fn f32_tensor(file: &TensorFile, name: &str) -> (Vec<usize>, Vec<f32>) {
    let (shape, values) = file
        .f32(name, file_rank(file, name), "fixture")
        .expect("fixture tensor");
    (shape.to_vec(), values.to_vec())
}

fn file_rank(file: &TensorFile, name: &str) -> usize {
    file.get(name).map(|t| t.shape.len()).unwrap_or(0)
}

/// Prints and checks one comparison against the reference: relative L2 error `<= tolerance`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tolerance: f64) {
    let c = compare(got, want);
    println!(
        "{what}: rel L2 {:.3e} ({:.1}% of tolerance {tolerance:e}), worst abs {:.3e} at {}",
        c.rel_l2,
        100.0 * c.rel_l2 / tolerance,
        c.worst_abs,
        c.worst_index
    );
    assert!(
        c.rel_l2 <= tolerance,
        "{what}: rel L2 {:.3e} > {tolerance:e}",
        c.rel_l2
    );
}

/// The `i64` values of tensor `name` in a fixture file.
pub fn i64_tensor(file: &TensorFile, name: &str) -> (Vec<usize>, Vec<i64>) {
    let (shape, values) = file
        .i64(name, file_rank(file, name), "fixture")
        .expect("fixture tensor");
    (shape.to_vec(), values.to_vec())
}

/// A JSON list of strings (fixture files).
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}
