//! End-to-end parity of the pipelines with upstream `UnifiedPipeline` run with greedy draws
//! (argmax instead of `torch.multinomial`, no Gumbel noise), on the small random model of
//! `tests/fixtures/pipeline/model` (`tools/fixtures/make_pipeline_fixtures.py`).
//!
//! Bar: the final id grids of text-to-image (with and without guidance) are identical, and the
//! caption and VQA texts, before and after upstream's clean-up, are equal. Greedy runs make
//! every step a deterministic function of the logits; the fixture script checked that no
//! decision is a near-tie (its gaps are in `expected.json`), so rounding cannot flip one.

use muddit_engine::image_io::load_image;
use muddit_engine::pipeline::{ImageToText, Pipeline, TextToImage};
use muddit_engine::tensor_io::TensorFile;
use muddit_sampler::{DrawRule, Guidance, MaskSchedule, SamplerConfig, Temperature};
use muddit_tests::{assert_close, f32_tensor, fixture, i64_tensor, strings};
use serde_json::Value;

/// Decoded pixels of identical ids: relative L2 error bound in f32.
const PIXEL_TOLERANCE: f64 = 1e-4;

struct Fixture {
    doc: Value,
    tensors: TensorFile,
}

impl Fixture {
    fn load() -> Self {
        let dir = fixture("pipeline");
        let text = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json");
        let doc: Value = serde_json::from_str(&text).expect("expected.json is JSON");
        let tensors =
            TensorFile::read(&dir.join("expected.safetensors")).expect("expected.safetensors");
        Fixture { doc, tensors }
    }

    fn case(&self, name: &str) -> &Value {
        self.doc["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no case `{name}` in expected.json"))
    }

    fn ids(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        i64_tensor(&self.tensors, &format!("{name}/ids"))
    }
}

fn load_pipeline() -> Pipeline {
    let pipe = Pipeline::load(&fixture("pipeline/model")).expect("load the fixture model");
    assert_eq!(pipe.schedule, MaskSchedule::Cosine);
    pipe
}

/// The greedy sampler of the fixture: temperature (2, 0) (unused by greedy draws), cosine.
fn greedy(fx: &Fixture, steps: usize, guidance_scale: f32) -> SamplerConfig {
    let t = &fx.doc["temperature"];
    let mut cfg = SamplerConfig::new(steps);
    cfg.temperature = Temperature::Anneal {
        start: t[0].as_f64().expect("temperature") as f32,
        end: t[1].as_f64().expect("temperature") as f32,
    };
    cfg.schedule =
        MaskSchedule::from_config_name(fx.doc["masking_schedule"].as_str().expect("schedule"))
            .expect("schedule");
    cfg.guidance = Guidance::from_scale(guidance_scale).expect("guidance");
    cfg.draw = DrawRule::Greedy;
    cfg
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("a non-negative integer") as usize
}

/// Positions `(row, i, j)` where two `[B, h, w]` grids differ, at most `limit` of them.
fn grid_differences(
    got: &[i64],
    want: &[i64],
    h: usize,
    w: usize,
    limit: usize,
) -> (usize, String) {
    let diffs: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| g != w)
        .map(|(k, (g, want))| format!("[{}, {}, {}]: {g} vs {want}", k / (h * w), k / w % h, k % w))
        .collect();
    (
        diffs.len(),
        diffs
            .iter()
            .take(limit)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn check_text_to_image(name: &str) {
    let fx = Fixture::load();
    let case = fx.case(name);
    let pipe = load_pipeline();
    let req = TextToImage {
        prompts: strings(&case["prompts"]),
        negative_prompt: case["negative_prompt"]
            .as_str()
            .expect("negative_prompt")
            .to_string(),
        images_per_prompt: 1,
        width: usize_of(&case["width"]),
        height: usize_of(&case["height"]),
        sampler: greedy(
            &fx,
            usize_of(&case["steps"]),
            case["guidance_scale"].as_f64().expect("guidance_scale") as f32,
        ),
        edit: None,
    };
    let out = pipe
        .text_to_image(&req, &mut |_| {})
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let (shape, want) = fx.ids(name);
    let (h, w) = out.grid;
    assert_eq!(vec![out.batch, h, w], shape, "{name}: id grid shape");
    let (n, first) = grid_differences(&out.ids, &want, h, w, 8);
    let distinct = {
        let mut v = want.clone();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    println!(
        "{name}: {} prompt(s), {} steps, guidance {:?}: {} ids, {n} differ from upstream ({distinct} distinct codes)",
        req.prompts.len(),
        req.sampler.steps,
        req.sampler.guidance,
        want.len()
    );
    assert_eq!(
        n,
        0,
        "{name}: {n} of {} ids differ from upstream's greedy run: {first}",
        want.len()
    );
    let (_, pixels) = f32_tensor(&fx.tensors, &format!("{name}/pixels"));
    assert_close(
        &format!("{name}/pixels"),
        &out.pixels,
        &pixels,
        PIXEL_TOLERANCE,
    );
}

fn check_image_to_text(name: &str) {
    let fx = Fixture::load();
    let case = fx.case(name);
    let mut pipe = load_pipeline();
    let r = usize_of(&case["resolution"]);
    let files = strings(&case["images"]);
    let mut images = Vec::new();
    for f in &files {
        let img = load_image(&fixture(&format!("pipeline/images/{f}")), r, r)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        images.extend(img.data);
    }
    let b = files.len();
    // The loader against the tensor upstream was given (PIL's resize is reproduced exactly).
    let (_, want_images) = f32_tensor(&fx.tensors, &format!("{name}/images"));
    assert_close(&format!("{name}/images"), &images, &want_images, 1e-7);
    // The image ids stay fixed through the run: compare them on their own first.
    let (_, want_image_ids) = i64_tensor(&fx.tensors, &format!("{name}/image_ids"));
    let image_ids = pipe.vqvae.encode(&images, b, r, r).expect("VQ encode");
    let g = r / pipe.vqvae.cfg.scale_factor();
    let (n, first) = grid_differences(&image_ids, &want_image_ids, g, g, 8);
    assert_eq!(
        n, 0,
        "{name}: {n} VQ ids of the input images differ from upstream's: {first}"
    );

    let question = case["question"].as_str().map(String::from);
    let req = ImageToText {
        images,
        batch: b,
        resolution: r,
        questions: question.clone().map(|q| vec![q]),
        sampler: greedy(&fx, usize_of(&case["steps"]), 1.0),
    };
    let answers = pipe
        .image_to_text(&req, &mut |_| {})
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let want_texts = strings(&case["texts"]);
    let want_raw = strings(&case["raw_texts"]);
    assert_eq!(answers.len(), want_texts.len(), "{name}: number of answers");
    println!(
        "{name}: {b} image(s) at {r} px, question {question:?}, {} steps",
        req.sampler.steps
    );
    for (i, a) in answers.iter().enumerate() {
        let same = a.raw == want_raw[i] && a.text == want_texts[i];
        println!(
            "  [{i}] {}: {:?}",
            if same { "equal" } else { "DIFFERENT" },
            a.text
        );
        assert_eq!(
            a.raw, want_raw[i],
            "{name}[{i}]: decoded text before the clean-up"
        );
        assert_eq!(
            a.text, want_texts[i],
            "{name}[{i}]: text after the clean-up"
        );
    }
}

#[test]
fn text_to_image_with_guidance_matches_upstream_greedy() {
    check_text_to_image("t2i_guided");
}

#[test]
fn text_to_image_without_guidance_matches_upstream_greedy() {
    check_text_to_image("t2i_unguided");
}

#[test]
fn captions_match_upstream_greedy() {
    check_image_to_text("caption");
}

#[test]
fn vqa_answer_matches_upstream_greedy() {
    check_image_to_text("vqa");
}
