//! The GPU suite: the checks of `muddit_tests::cuda_checks`, `cuda_pipeline_checks` and `edit_checks` on
//! GPU 0, the same lists the emulator passes in CI (`cuda_emulated.rs`,
//! `cuda_emulated_pipeline.rs`), plus CUDA-event kernel timings. Without a driver or a GPU
//! each test says so and passes, unless `MUDDIT_REQUIRE_CUDA=1`, which turns a missing GPU
//! into a failure: run
//! `MUDDIT_REQUIRE_CUDA=1 cargo test --release -p muddit-tests --test cuda_gpu -- --nocapture`
//! on a GPU machine.

use muddit_engine::cuda::{self, DeviceModels};
use muddit_tests::device::gpu;

muddit_tests::cuda_check_tests!(gpu);
muddit_tests::cuda_pipeline_check_tests!(gpu);
muddit_tests::edit_check_tests!(gpu);

/// CUDA-event timings of a whole default-model text-to-image run: the GEMMs, attention and the
/// sampler kernels all show up, with positive GPU times.
#[test]
fn kernel_timings_cover_a_default_model_run() {
    let Some(dev) = gpu() else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-64");
    let pipe = muddit_engine::pipeline::Pipeline::load(&root).expect("default model");
    let model = cuda::CudaMmdit::load(&dev, &pipe.root).expect("device model");
    let req = muddit_engine::pipeline::TextToImage {
        prompts: vec!["a red circle on the left".into()],
        negative_prompt: String::new(),
        images_per_prompt: 1,
        width: 64,
        height: 64,
        sampler: muddit_sampler::SamplerConfig::new(16),
        edit: None,
    };
    dev.start_kernel_timing();
    cuda::text_to_image(
        &pipe,
        DeviceModels::with_host(&model, &pipe),
        &req,
        &mut |_| {},
    )
    .expect("device run");
    let times = dev.kernel_times().expect("kernel times");
    for t in &times {
        println!(
            "{:<24} {:>5} launches {:>9.3} ms",
            t.kernel, t.launches, t.total_ms
        );
    }
    for kernel in [
        "gemm_bf16",
        "flash_attn_d64_bf16",
        "sample_tokens_f32",
        "remask_f32",
    ] {
        let t = times.iter().find(|t| t.kernel == kernel);
        assert!(
            t.is_some_and(|t| t.launches > 0 && t.total_ms > 0.0),
            "{kernel}: {t:?}"
        );
    }
}
