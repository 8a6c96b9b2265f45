//! One guided transformer step: batch 2 (unconditional + conditional), 77 text tokens.
//!
//! - `tiny/32x32`: the test-size model, for quick comparisons.
//! - `muddit-512/bf16-weights/32x32`: the public 1B shape at 512 px (a 32x32 id grid, 256 tokens
//!   after the down block), weights stored in bf16, computed in f32.
//!
//! `cargo bench -p muddit-benches --bench transformer_step`

use criterion::{criterion_group, criterion_main, Criterion};
use muddit_engine::model_dir::load_transformer;
use muddit_engine::random::{random_inputs, WeightDtype};
use muddit_engine::tensor_io::Values;
use muddit_engine::MmditInput;

fn guided_step(c: &mut Criterion, preset: &str, dtype: WeightDtype, label: &str) {
    let model = load_transformer(&muddit_benches::bench_model(preset, dtype)).expect("load");
    let inputs = random_inputs(&model.cfg, 2, 32, 77, 0);
    let f = |name: &str| match &inputs[name].values {
        Values::F32(v) => v.clone(),
        Values::I64(_) => panic!("{name} is not f32"),
    };
    let Values::I64(ids) = &inputs["image_tokens"].values else {
        panic!("ids")
    };
    let (text, pooled, micro) = (
        f("encoder_hidden_states"),
        f("pooled_projections"),
        f("micro_conds"),
    );
    let input = MmditInput {
        image_tokens: ids,
        batch: 2,
        height: 32,
        width: 32,
        encoder_hidden_states: &text,
        text_len: 77,
        pooled_projections: &pooled,
        timestep: 0.5,
        micro_conds: &micro,
    };
    c.bench_function(label, |b| {
        b.iter(|| model.forward(&input).expect("forward"))
    });
}

fn tiny(c: &mut Criterion) {
    guided_step(c, "tiny", WeightDtype::F32, "transformer_step/tiny/32x32");
}

fn public_shape(c: &mut Criterion) {
    guided_step(
        c,
        "muddit-512",
        WeightDtype::Bf16,
        "transformer_step/muddit-512/bf16-weights/32x32",
    );
}

criterion_group!(quick, tiny);
criterion_group!(name = heavy; config = muddit_benches::heavy(90); targets = public_shape);
criterion_main!(quick, heavy);
