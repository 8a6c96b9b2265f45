//! The VQ-VAE against `diffusers` 0.34 `VQModel` (`tools/fixtures/make_sides_fixtures.py`).
//! Bar: decoder output relative L2 <= 1e-4; encoder ids identical.

use muddit_engine::tensor_io::TensorFile;
use muddit_engine::vqvae::load_vqvae;
use muddit_tests::{assert_close, f32_tensor, fixture, i64_tensor};

const TOLERANCE: f64 = 1e-4;

fn check_case(case: &str) {
    let dir = fixture(&format!("sides/{case}"));
    let model = load_vqvae(&dir).unwrap_or_else(|e| panic!("{case}: {e}"));
    let inputs = TensorFile::read(&dir.join("inputs.safetensors")).expect("inputs");
    let want = TensorFile::read(&dir.join("outputs.safetensors")).expect("outputs");

    // Encoder: latents close, ids identical.
    let (shape, image) = f32_tensor(&inputs, "image");
    let (b, h, w) = (shape[0], shape[2], shape[3]);
    let latents = model.encode_latents(&image, b, h, w).expect("encode");
    let (lshape, ref_latents) = f32_tensor(&want, "latents");
    let e = lshape[1];
    let mut nchw = vec![0.0; latents.data.len()];
    let hw = latents.h * latents.w;
    for bi in 0..b {
        for p in 0..hw {
            for c in 0..e {
                nchw[(bi * e + c) * hw + p] = latents.data[(bi * hw + p) * e + c];
            }
        }
    }
    assert_close(&format!("{case}/latents"), &nchw, &ref_latents, TOLERANCE);
    let ids = model.nearest_codes(&latents.data);
    let (tshape, ref_ids) = i64_tensor(&want, "tokens");
    let (_, gaps) = f32_tensor(&want, "tokens_gap");
    let differ: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] != ref_ids[i]).collect();
    let smallest_gap = gaps.iter().cloned().fold(f32::INFINITY, f32::min);
    println!(
        "{case}/tokens: {} of {} ids differ; smallest squared-distance gap between the best and second code {smallest_gap:.3e} (no exact ties)",
        differ.len(),
        ids.len()
    );
    assert!(differ.is_empty(), "{case}: ids differ at {differ:?}");
    assert_eq!(
        model.encode(&image, b, h, w).expect("encode"),
        ref_ids,
        "{case}: encode() differs from nearest_codes()"
    );

    // Decoder from ids.
    let (dshape, tokens) = i64_tensor(&inputs, "decode_tokens");
    assert_eq!(dshape, tshape);
    let decoded = model
        .decode(&tokens, dshape[0], dshape[1], dshape[2])
        .expect("decode");
    let (ishape, reference) = f32_tensor(&want, "image");
    assert_eq!(decoded.len(), ishape.iter().product::<usize>());
    assert_close(&format!("{case}/image"), &decoded, &reference, TOLERANCE);
}

#[test]
fn three_levels_two_blocks_with_mid_attention() {
    check_case("vq_attn_3level");
}

#[test]
fn four_levels_one_block_gelu_wider_codebook_no_attention_f16_weights() {
    check_case("vq_noattn_4level");
}

#[test]
fn spatial_norm_decoder_with_mid_attention_f16_weights() {
    check_case("vq_spatial_2level");
}

/// Largest difference in 8-bit levels, and the fraction of values that differ.
fn level_diff(got: &[f32], want: &[f32]) -> (f32, f64) {
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| ((g - w) * 255.0).abs())
        .fold(0.0f32, f32::max);
    let differ = got
        .iter()
        .zip(want)
        .filter(|(g, w)| ((*g - *w) * 255.0).abs() > 0.5)
        .count();
    (worst, differ as f64 / got.len() as f64)
}

#[test]
fn image_files_decode_and_resize_as_pil() {
    use muddit_engine::image_io::load_image;
    let dir = fixture("sides/images");
    let want = TensorFile::read(&dir.join("resized.safetensors")).expect("reference");
    for ext in ["png", "jpg", "webp"] {
        let path = dir.join(format!("pattern.{ext}"));
        let (shape, decoded) = f32_tensor(&want, &format!("{ext}_decoded"));
        let native = load_image(&path, shape[1], shape[2]).expect("load");
        let (worst, frac) = level_diff(&native.data, &decoded);
        println!(
            "{ext}: decoding differs from PIL by at most {worst} levels ({:.2}% of values)",
            100.0 * frac
        );
        // PNG and lossless WebP are exact; JPEG decoders may round the IDCT differently.
        let bound = if ext == "jpg" { 3.0 } else { 0.0 };
        assert!(
            worst <= bound,
            "{ext}: decoded pixels differ by {worst} levels"
        );

        let (_, resized) = f32_tensor(&want, &format!("{ext}_resized"));
        let small = load_image(&path, 32, 32).expect("load and resize");
        assert_eq!((small.height, small.width), (32, 32));
        let (worst, frac) = level_diff(&small.data, &resized);
        println!(
            "{ext}: 61x47 -> 32x32 bilinear differs from PIL by at most {worst} levels ({:.2}% of values)",
            100.0 * frac
        );
        assert!(worst <= bound, "{ext}: resize differs by {worst} levels");
    }
}

#[test]
fn png_round_trip_is_exact_on_8_bit_values() {
    use muddit_engine::image_io::{load_image, save_png};
    let (h, w) = (5, 7);
    let data: Vec<f32> = (0..3 * h * w)
        .map(|i| ((i * 37) % 256) as f32 / 255.0)
        .collect();
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("x.png");
    save_png(&path, &data, h, w).expect("save");
    let back = load_image(&path, h, w).expect("load");
    assert_eq!(back.data, data);
}
