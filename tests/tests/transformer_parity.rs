//! The MM-DiT forward against tensors dumped from the reference implementation
//! (`tools/fixtures/make_engine_fixtures.py`). Bar: relative L2 error <= 1e-4 in f32; with bf16
//! matrix products (`--dtype bf16`: weights and activations rounded to bf16 into every product,
//! f32 accumulation) <= 2e-2, the bf16 tolerance of the CUDA backend.

use muddit_engine::debug::transformer_forward;
use muddit_engine::model_dir::load_transformer_with;
use muddit_engine::tensor_io::TensorFile;
use muddit_engine::Compute;
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
