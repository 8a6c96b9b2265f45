//! The CLIP text encoder against `transformers` 4.48 `CLIPTextModelWithProjection`
//! (`tools/fixtures/make_sides_fixtures.py`). Bar: relative L2 error <= 1e-4 in f32.

use muddit_engine::clip_text::load_text_encoder;
use muddit_engine::pth::{mask_embedding_path, read_mask_embedding};
use muddit_engine::tensor_io::TensorFile;
use muddit_tests::{assert_close, f32_tensor, fixture, i64_tensor};

const TOLERANCE: f64 = 1e-4;

fn check_case(case: &str, with_mask: bool) {
    let dir = fixture(&format!("sides/{case}"));
    let mut model = load_text_encoder(&dir).unwrap_or_else(|e| panic!("{case}: {e}"));
    if with_mask {
        // As the pipeline: `<mask>` takes the next free id, its row comes from the .pth.
        let path = mask_embedding_path(&dir).expect("mask embedding file");
        let row = read_mask_embedding(&path, model.cfg.hidden_size).expect("mask embedding");
        let id = model.cfg.vocab_size;
        model
            .set_token_embedding(id, &row)
            .expect("append <mask> row");
        assert_eq!(model.vocab_rows(), id + 1);
    }
    let inputs = TensorFile::read(&dir.join("inputs.safetensors")).expect("inputs");
    let want = TensorFile::read(&dir.join("outputs.safetensors")).expect("outputs");
    let (shape, ids) = i64_tensor(&inputs, "input_ids");
    let out = model.forward(&ids, shape[0]).expect("forward");
    for (name, got) in [
        ("text_embeds", &out.text_embeds),
        ("penultimate", &out.penultimate),
        ("last_hidden_state", &out.last_hidden_state),
    ] {
        let (_, reference) = f32_tensor(&want, name);
        assert_close(&format!("{case}/{name}"), got, &reference, TOLERANCE);
    }
}

#[test]
fn gelu_with_argmax_eos_and_appended_mask_row() {
    check_case("clip_gelu_eos2", true);
}

#[test]
fn quick_gelu_with_first_eos_rule_and_f16_weights() {
    check_case("clip_quick_eos", false);
}

#[test]
fn shorter_rows_match_the_prefix_of_full_rows() {
    // Causal attention: the first 20 positions of a 77-token row do not see the rest.
    let dir = fixture("sides/clip_quick_eos");
    let model = load_text_encoder(&dir).expect("load");
    let inputs = TensorFile::read(&dir.join("inputs.safetensors")).expect("inputs");
    let (_, ids) = i64_tensor(&inputs, "input_ids");
    let full = model.forward(&ids[..77], 1).expect("forward");
    let short = model.forward(&ids[..20], 1).expect("forward");
    let d = model.cfg.hidden_size;
    assert_close(
        "penultimate[:20]",
        &short.penultimate,
        &full.penultimate[..20 * d],
        1e-6,
    );
}
