//! The MM-DiT forward against tensors dumped from the reference implementation
//! (`tools/fixtures/make_engine_fixtures.py`). Bar: relative L2 error <= 1e-4 in f32; with bf16
//! matrix products (`--dtype bf16`: weights and activations rounded to bf16 into every product,
//! f32 accumulation) <= 2e-2, the bf16 tolerance of the CUDA backend.

use muddit_engine::debug::transformer_forward;
use muddit_engine::model_dir::load_transformer_with;
use muddit_engine::tensor_io::TensorFile;
use muddit_engine::{Compute, MmditInput, Scratch};
use muddit_tests::{assert_close, f32_tensor, fixture};

fn tolerance(compute: Compute) -> f64 {
    match compute {
        Compute::F32 => 1e-4,
        Compute::Bf16 => 2e-2,
    }
}

fn check_case(case: &str) {
    check_case_in(case, Compute::F32);
    check_case_in(case, Compute::Bf16);
}

fn check_case_in(case: &str, compute: Compute) {
    let limit = tolerance(compute);
    let dir = fixture(&format!("engine/{case}"));
    let model = load_transformer_with(&dir, compute).unwrap_or_else(|e| panic!("{case}: {e}"));
    let inputs = TensorFile::read(&dir.join("inputs.safetensors")).expect("inputs");
    let want = TensorFile::read(&dir.join("outputs.safetensors")).expect("outputs");
    let got = transformer_forward(&model, &inputs).unwrap_or_else(|e| panic!("{case}: {e}"));
    let mut compared = 0;
    for name in want.names() {
        let (shape, reference) = f32_tensor(&want, name);
        let ours = got
            .get(name)
            .unwrap_or_else(|| panic!("{case}: no `{name}` in our outputs"));
        assert_eq!(ours.shape, shape, "{case}/{name}: shape");
        let muddit_engine::tensor_io::Values::F32(values) = &ours.values else {
            panic!("{case}/{name}: not f32")
        };
        assert_close(
            &format!("{case}/{name} ({compute:?})"),
            values,
            &reference,
            limit,
        );
        compared += 1;
    }
    assert_eq!(
        compared,
        got.len(),
        "{case}: we produce outputs the fixture does not have"
    );
}

#[test]
fn muddit_batch2_with_text_head() {
    check_case("muddit_b2");
}

#[test]
fn meissonic_batch1_without_text_head() {
    check_case("meissonic_b1");
}

#[test]
fn muddit_without_down_and_up_blocks_on_a_non_square_grid() {
    check_case("muddit_nodown_b1");
}

#[test]
fn muddit_bf16_weights_widened_to_f32() {
    check_case("muddit_bf16");
}

/// The fixture's inputs, cut to the first `batch` items around other ids.
struct Inputs<'a> {
    text: &'a [f32],
    text_len: usize,
    pooled: &'a [f32],
    micro: &'a [f32],
    grid: (usize, usize),
    batch: usize,
}

impl<'a> Inputs<'a> {
    /// The image ids and the other inputs of a fixture's `inputs.safetensors`.
    fn of(file: &'a TensorFile) -> (&'a [i64], Inputs<'a>) {
        let (ids_shape, ids) = file.i64("image_tokens", 3, "[B,h,w]").expect("ids");
        let (text_shape, text) = file
            .f32("encoder_hidden_states", 3, "[B,L,J]")
            .expect("text");
        let pooled = file.f32("pooled_projections", 2, "[B,P]").expect("pooled");
        let inputs = Inputs {
            text,
            text_len: text_shape[1],
            pooled: pooled.1,
            micro: file.f32("micro_conds", 2, "[B,5]").expect("micro").1,
            grid: (ids_shape[1], ids_shape[2]),
            batch: ids_shape[0],
        };
        (ids, inputs)
    }

    fn with(&self, ids: &'a [i64], batch: usize) -> MmditInput<'a> {
        let part = |v: &'a [f32]| &v[..batch * v.len() / self.batch];
        MmditInput {
            image_tokens: ids,
            batch,
            height: self.grid.0,
            width: self.grid.1,
            encoder_hidden_states: part(self.text),
            text_len: self.text_len,
            pooled_projections: part(self.pooled),
            timestep: 0.25,
            micro_conds: part(self.micro),
        }
    }
}

/// A [`Scratch`] carried from call to call (as a run's steps carry it) gives the logits of a
/// fresh forward bit for bit: after a forward of another shape, and after one of the same shape
/// on other ids, nothing of the earlier call leaks into the next.
#[test]
fn forwards_reusing_a_scratch_equal_fresh_forwards() {
    let dir = fixture("engine/muddit_b2");
    let model = load_transformer_with(&dir, Compute::F32).expect("model");
    let file = TensorFile::read(&dir.join("inputs.safetensors")).expect("inputs");
    let (ids, inputs) = Inputs::of(&file);
    let b = inputs.batch;
    let vocab = model.cfg.vocab_size as i64;
    let other: Vec<i64> = ids.iter().map(|&i| (i + 3) % vocab).collect();
    let fresh = model
        .forward_image(&inputs.with(ids, b))
        .expect("fresh forward");
    let (mut scratch, mut logits) = (Scratch::default(), Vec::new());
    for (ids, batch) in [(&other[..ids.len() / b], 1), (&other[..], b), (ids, b)] {
        model
            .forward_image_into(&inputs.with(ids, batch), None, &mut scratch, &mut logits)
            .expect("forward with a scratch");
    }
    assert_eq!(logits.len(), fresh.len());
    assert!(logits
        .iter()
        .zip(&fresh)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    // A guided forward between: the scratch changes shape and back.
    let mut guided = Vec::new();
    model
        .forward_image_into(&inputs.with(ids, b), Some(3.0), &mut scratch, &mut guided)
        .expect("guided forward");
    model
        .forward_image_into(&inputs.with(ids, b), None, &mut scratch, &mut logits)
        .expect("unguided again");
    assert!(logits
        .iter()
        .zip(&fresh)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let text_fresh = model.forward_text(&inputs.with(ids, b)).expect("text");
    let text_reused = model
        .forward_text_in(&inputs.with(ids, b), &mut scratch)
        .expect("text with the scratch");
    assert!(text_fresh.is_some() && text_fresh == text_reused);
}

/// Guidance folded into the image head (`u + g (c - u)` before the last, linear layer, which then
/// runs on half the rows) gives the guided logits of the unfolded forward: within 1e-5 relative
/// L2 in f32 and the bf16 tolerance with bf16 products, for several scales; a guided forward
/// needs an even batch.
#[test]
fn guidance_folded_into_the_head_equals_guided_logits() {
    let dir = fixture("engine/muddit_b2");
    let file = TensorFile::read(&dir.join("inputs.safetensors")).expect("inputs");
    let (ids, inputs) = Inputs::of(&file);
    assert_eq!(inputs.batch, 2, "the fixture is one [uncond; cond] pair");
    for (compute, limit) in [
        (Compute::F32, 1e-5),
        (Compute::Bf16, tolerance(Compute::Bf16)),
    ] {
        let model = load_transformer_with(&dir, compute).expect("model");
        let both = model.forward_image(&inputs.with(ids, 2)).expect("unguided");
        let (u, c) = both.split_at(both.len() / 2);
        for g in [0.5f32, 3.0, 9.0] {
            let want: Vec<f32> = u.iter().zip(c).map(|(u, c)| u + g * (c - u)).collect();
            let mut got = Vec::new();
            model
                .forward_image_into(
                    &inputs.with(ids, 2),
                    Some(g),
                    &mut Scratch::default(),
                    &mut got,
                )
                .expect("guided");
            assert_close(
                &format!("folded guidance {g} ({compute:?})"),
                &got,
                &want,
                limit,
            );
        }
        let mut odd = Vec::new();
        let e = model
            .forward_image_into(
                &inputs.with(&ids[..ids.len() / 2], 1),
                Some(3.0),
                &mut Scratch::default(),
                &mut odd,
            )
            .expect_err("a guided batch of 1");
        assert!(e.to_string().contains("even batch"), "{e}");
    }
}
