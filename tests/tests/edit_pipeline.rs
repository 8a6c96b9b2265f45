//! Edits through the CPU pipeline on the default model (`models/shapes-64`): kept tokens are
//! bit-identical to the encoded input, strength 1 on a fully editable grid is text-to-image,
//! a tiny strength returns the encoding, outpainted canvases keep the old tokens, and image `b`
//! of a batch is the run seeded `seed + b` alone. With guidance, a negative prompt and batches.

use muddit_engine::pipeline::{mask_tokens, EditIds, Images, Pipeline, TextToImage};
use muddit_tests::{encoded_eval_image, encoded_left_half, guided_request, repo};

fn pipeline() -> Pipeline {
    Pipeline::load(&repo().join("models/shapes-64")).expect("the default model")
}

/// The default model, the ids `[8, 8]` of eval image 003 and the model's `<mask>` id.
fn model_and_ids() -> (Pipeline, Vec<i64>, u32) {
    let pipe = pipeline();
    let (_, ids) = encoded_eval_image(&pipe, "003.png");
    let mask_id = pipe.transformer_cfg.mask_id() as u32;
    (pipe, ids, mask_id)
}

/// img2img of the whole 8 x 8 grid of `ids` at `strength`.
fn img2img(ids: &[i64], mask_id: u32, strength: f32) -> EditIds {
    let (_, edit) = EditIds::place(ids, (8, 8), None, [0; 4], mask_id, strength).expect("edit");
    edit
}

/// Two prompts x `per_prompt` images, guided with a negative prompt, 8 steps, seed 21.
fn request(per_prompt: usize, edit: Option<EditIds>) -> TextToImage {
    let prompts = [
        "a green square to the left of a blue circle",
        "a yellow triangle to the left of a blue circle",
    ];
    guided_request(&prompts, per_prompt, (8, 21), edit)
}

fn run(pipe: &Pipeline, req: &TextToImage) -> Images {
    pipe.text_to_image(req, &mut |_| {}).expect("run")
}

/// The ids of image `b`: `[h * w]`.
fn image_ids(images: &Images, b: usize) -> &[i64] {
    let n = images.grid.0 * images.grid.1;
    &images.ids[b * n..(b + 1) * n]
}

#[test]
fn inpainting_keeps_every_token_outside_the_mask() {
    let (pipe, ids, mask_id) = model_and_ids();
    // The left half of the pixels white, reduced to tokens: columns 0..4 of 8.
    let mask: Vec<f32> = (0..64 * 64)
        .map(|p| f32::from(u8::from(p % 64 < 29)))
        .collect();
    let regenerate = mask_tokens(&mask, 64, 64, 8).expect("mask");
    assert_eq!(
        regenerate.iter().filter(|&&r| r).count(),
        32,
        "29 px round up to 4 tokens"
    );
    for strength in [1.0, 0.5] {
        let (grid, edit) =
            EditIds::place(&ids, (8, 8), Some(&regenerate), [0; 4], mask_id, strength)
                .expect("edit");
        assert_eq!(grid, (8, 8));
        let out = run(&pipe, &request(2, Some(edit)));
        let mut changed = 0;
        for b in 0..out.batch {
            for (t, (&got, &was)) in image_ids(&out, b).iter().zip(&ids).enumerate() {
                if regenerate[t] {
                    changed += usize::from(got != was);
                } else {
                    assert_eq!(got, was, "strength {strength}, image {b}, kept token {t}");
                }
            }
        }
        println!(
            "strength {strength}: {changed} of {} regenerated tokens changed",
            4 * 32
        );
        assert!(
            changed > 0,
            "strength {strength}: the masked half was regenerated"
        );
    }
}

#[test]
fn full_strength_img2img_is_text_to_image_and_a_tiny_one_the_encoding() {
    let (pipe, ids, mask_id) = model_and_ids();
    let full = img2img(&ids, mask_id, 1.0);
    assert!(full.keep.iter().all(|&k| !k), "img2img keeps nothing");
    let t2i = run(&pipe, &request(2, None));
    let s1 = run(&pipe, &request(2, Some(full)));
    assert_eq!(s1.ids, t2i.ids, "strength 1 vs text-to-image, same seed");
    assert_eq!(s1.pixels, t2i.pixels);

    let tiny = img2img(&ids, mask_id, 0.01);
    let out = run(&pipe, &request(1, Some(tiny)));
    for b in 0..out.batch {
        assert_eq!(
            image_ids(&out, b),
            &ids[..],
            "image {b}: the encoding itself"
        );
    }
    // A low strength keeps most tokens and changes some.
    let low = img2img(&ids, mask_id, 0.3);
    let out = run(&pipe, &request(1, Some(low)));
    let same = image_ids(&out, 0)
        .iter()
        .zip(&ids)
        .filter(|(a, b)| a == b)
        .count();
    println!("strength 0.3: {same} of 64 tokens as encoded");
    assert!((64 - 19..64).contains(&same), "{same} of 64 tokens kept");
}

#[test]
fn outpainting_keeps_the_old_tokens_on_the_grown_canvas() {
    let pipe = pipeline();
    let (image, _) = encoded_eval_image(&pipe, "003.png");
    // The left 32 columns, grown by 32 px (4 tokens) on the right.
    let ids = encoded_left_half(&pipe, &image);
    let mask_id = pipe.transformer_cfg.mask_id() as u32;
    let (grid, edit) =
        EditIds::place(&ids, (8, 4), None, [0, 0, 4, 0], mask_id, 1.0).expect("edit");
    assert_eq!(grid, (8, 8));
    assert_eq!(edit.keep.iter().filter(|&&k| k).count(), 32);
    let out = run(&pipe, &request(2, Some(edit)));
    for b in 0..out.batch {
        let got = image_ids(&out, b);
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(got[(i / 4) * 8 + i % 4], id, "image {b}, old token {i}");
        }
        assert!(
            got.iter().all(|&id| (0..512).contains(&id)),
            "every token a code"
        );
    }
}

#[test]
fn image_b_of_a_batch_is_the_run_seeded_seed_plus_b_alone() {
    let (pipe, ids, mask_id) = model_and_ids();
    for edit in [None, Some(img2img(&ids, mask_id, 0.6))] {
        let batch = run(&pipe, &request(2, edit.clone()));
        for b in 0..4 {
            let mut alone = request(1, edit.clone());
            alone.prompts = vec![alone.prompts[b / 2].clone()];
            alone.sampler.seed += b as u64;
            let one = run(&pipe, &alone);
            assert_eq!(
                image_ids(&batch, b),
                image_ids(&one, 0),
                "edit {}: image {b}",
                edit.is_some()
            );
        }
    }
}

#[test]
fn bad_edits_are_named() {
    let (pipe, ids, mask_id) = model_and_ids();
    let mut edit = img2img(&ids, mask_id, 1.0);
    edit.ids.pop();
    let err = pipe
        .text_to_image(&request(1, Some(edit)), &mut |_| {})
        .err()
        .expect("short ids");
    assert!(err.to_string().contains("63 ids"), "{err}");
    let mut edit = img2img(&ids, mask_id, 1.5);
    let err = pipe
        .text_to_image(&request(1, Some(edit.clone())), &mut |_| {})
        .err()
        .expect("strength 1.5");
    assert!(err.to_string().contains("strength"), "{err}");
    edit.strength = 1.0;
    edit.keep = vec![true; 64];
    edit.ids[3] = mask_id;
    let err = pipe
        .text_to_image(&request(1, Some(edit)), &mut |_| {})
        .err()
        .expect("a kept mask id");
    assert!(err.to_string().contains("kept token 3"), "{err}");
    let err = EditIds::place(&ids, (8, 7), None, [0; 4], mask_id, 1.0).unwrap_err();
    assert!(err.to_string().contains("8 x 7"), "{err}");
    let err = mask_tokens(&[0.0; 10], 4, 4, 2).unwrap_err();
    assert!(err.to_string().contains("10 values"), "{err}");
}
