//! Edits: `Sampler::prepare_edit` (which tokens an edit masks, where it starts) and
//! `Sampler::step_keeping` (kept positions never written, the schedule over the editable ones).

use muddit_sampler::{
    DrawRule, Guidance, Sampler, SamplerConfig, SamplerError, Temperature, TokenLayout,
};

/// SplitMix64 logits in [-r, r): `[len]`.
fn logits(seed: u64, len: usize, r: f32) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / 8_388_608.0 - 1.0) * r
        })
        .collect()
}

fn sampler(steps: usize, seed: u64, guidance: Guidance, temperature: Temperature) -> Sampler {
    Sampler::new(SamplerConfig {
        guidance,
        temperature,
        seed,
        ..SamplerConfig::new(steps)
    })
    .unwrap()
    .with_seed_per_row()
}

/// A 6 x 5 grid of codes below 16; the left two columns kept.
fn grid() -> (TokenLayout, Vec<u32>, Vec<bool>) {
    let layout = TokenLayout::image(3, 6, 5, 16, 20).unwrap();
    let ids: Vec<u32> = (0..30).map(|i| (i * 7 % 16) as u32).collect();
    let keep: Vec<bool> = (0..30).map(|i| i % 5 < 2).collect();
    (layout, ids, keep)
}

fn batch_of(ids: &[u32], batch: usize) -> Vec<u32> {
    (0..batch).flat_map(|_| ids.iter().copied()).collect()
}

/// Runs the steps from `start` with random logits; returns the ids after each step.
fn run(
    s: &Sampler,
    layout: &TokenLayout,
    mut ids: Vec<u32>,
    keep: &[bool],
    start: usize,
) -> Vec<Vec<u32>> {
    let len = layout.logits_len(s.config().guidance).unwrap();
    (start..s.steps())
        .map(|step| {
            let l = logits(step as u64 + 99, len, 6.0);
            let report = s.step_keeping(step, &mut ids, &l, layout, keep).unwrap();
            if step + 1 < s.steps() {
                let editable = keep.iter().filter(|&&k| !k).count();
                for &k in &report.mask_len {
                    // The schedule counts the editable tokens only.
                    let raw = (editable as f32
                        * s.config()
                            .schedule
                            .mask_ratio((step + 1) as f32 / s.steps() as f32))
                    .floor() as usize;
                    assert!(k == raw.max(1) || k < raw, "step {step}: k {k}, raw {raw}");
                }
            }
            ids.clone()
        })
        .collect()
}

#[test]
fn kept_positions_are_never_written() {
    let (layout, grid_ids, keep) = grid();
    // Temperatures where upstream could re-mask a known token (|T| > 4.3), both signs.
    for temperature in [
        Temperature::default(),
        Temperature::Anneal {
            start: 40.0,
            end: 30.0,
        },
        Temperature::Anneal {
            start: -40.0,
            end: -10.0,
        },
    ] {
        for guidance in [Guidance::Off, Guidance::Cfg { scale: 3.0 }] {
            let s = sampler(7, 5, guidance, temperature);
            let mut ids = batch_of(&grid_ids, layout.batch);
            let start = s.prepare_edit(&mut ids, &keep, 1.0, &layout).unwrap();
            assert_eq!(start, Some(0), "strength 1 starts at step 0");
            for (step, after) in run(&s, &layout, ids, &keep, 0).iter().enumerate() {
                for (i, (&got, &was)) in after.iter().zip(&batch_of(&grid_ids, 3)).enumerate() {
                    if keep[i % 30] {
                        assert_eq!(
                            got, was,
                            "{temperature:?} {guidance:?} step {step} token {i}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn keeping_nothing_is_the_plain_step() {
    let layout = TokenLayout::image(2, 4, 8, 16, 20).unwrap();
    let keep = vec![false; 32];
    for draw in [DrawRule::Sample, DrawRule::Greedy] {
        let s = Sampler::new(SamplerConfig {
            draw,
            seed: 3,
            ..SamplerConfig::new(5)
        })
        .unwrap();
        let (mut a, mut b) = (layout.all_masked().unwrap(), layout.all_masked().unwrap());
        for step in 0..5 {
            let l = logits(step as u64, layout.logits_len(Guidance::Off).unwrap(), 5.0);
            let ra = s.step(step, &mut a, &l, &layout).unwrap();
            let rb = s.step_keeping(step, &mut b, &l, &layout, &keep).unwrap();
            assert_eq!((a.clone(), ra), (b.clone(), rb), "{draw:?} step {step}");
        }
    }
}

#[test]
fn strength_sets_the_masked_count_and_the_start_step() {
    let (layout, grid_ids, keep) = grid();
    let editable = 18;
    let s = sampler(16, 11, Guidance::Off, Temperature::default());
    for strength in [0.3f32, 0.6, 0.99] {
        let mut ids = batch_of(&grid_ids, layout.batch);
        let start = s
            .prepare_edit(&mut ids, &keep, strength, &layout)
            .unwrap()
            .expect("something masked");
        let want = (strength * editable as f32).floor() as usize;
        for row in ids.chunks_exact(30) {
            assert_eq!(row.iter().filter(|&&id| id == 20).count(), want);
            for (t, (&id, &was)) in row.iter().zip(&grid_ids).enumerate() {
                assert!(id == was || (id == 20 && !keep[t]), "token {t}");
            }
        }
        let f = want as f32 / editable as f32;
        let ratio = |i: usize| match i {
            0 => 1.0,
            _ => s.config().schedule.mask_ratio(i as f32 / 16.0),
        };
        assert!(ratio(start) >= f, "strength {strength}: start {start}");
        assert!(
            start == 15 || ratio(start + 1) < f,
            "strength {strength}: start {start}"
        );
        // The rows choose differently (each row its own seed).
        assert_ne!(ids[..30], ids[30..60], "strength {strength}");
    }
    // A tiny strength masks nothing: the ids are the result.
    let mut ids = batch_of(&grid_ids, layout.batch);
    assert_eq!(
        s.prepare_edit(&mut ids, &keep, 0.01, &layout).unwrap(),
        None
    );
    assert_eq!(ids, batch_of(&grid_ids, layout.batch));
}

#[test]
fn masked_new_tokens_stay_masked_and_count() {
    // Outpainting: the right three columns hold the mask id and are editable.
    let (layout, mut grid_ids, _) = grid();
    let keep: Vec<bool> = (0..30).map(|i| i % 5 < 2).collect();
    for (t, id) in grid_ids.iter_mut().enumerate() {
        if !keep[t] {
            *id = 20;
        }
    }
    let s = sampler(8, 1, Guidance::Off, Temperature::default());
    let mut ids = batch_of(&grid_ids, layout.batch);
    assert_eq!(
        s.prepare_edit(&mut ids, &keep, 0.2, &layout).unwrap(),
        Some(0)
    );
    assert_eq!(ids, batch_of(&grid_ids, layout.batch));
    let last = run(&s, &layout, ids, &keep, 0).pop().unwrap();
    assert!(
        last.iter().all(|&id| id < 16),
        "every token drawn at the end"
    );
}

#[test]
fn row_b_of_a_batch_is_the_run_seeded_seed_plus_b() {
    let (layout, grid_ids, keep) = grid();
    let one = TokenLayout { batch: 1, ..layout };
    let batch = sampler(6, 40, Guidance::Off, Temperature::default());
    let mut ids = batch_of(&grid_ids, 3);
    let start = batch
        .prepare_edit(&mut ids, &keep, 0.5, &layout)
        .unwrap()
        .unwrap();
    // The same logits for every row, so only the seeds tell the rows apart.
    let steps = |s: &Sampler, layout: &TokenLayout, mut ids: Vec<u32>| {
        for step in start..6 {
            let row = logits(step as u64, 30 * 16, 6.0);
            let l: Vec<f32> = (0..layout.batch)
                .flat_map(|_| row.iter().copied())
                .collect();
            s.step_keeping(step, &mut ids, &l, layout, &keep).unwrap();
        }
        ids
    };
    let together = steps(&batch, &layout, ids);
    for b in 0..3 {
        let alone = sampler(6, 40 + b as u64, Guidance::Off, Temperature::default());
        let mut ids = grid_ids.clone();
        assert_eq!(
            alone.prepare_edit(&mut ids, &keep, 0.5, &one).unwrap(),
            Some(start)
        );
        assert_eq!(
            steps(&alone, &one, ids),
            together[b * 30..(b + 1) * 30],
            "row {b}"
        );
    }
}

#[test]
fn bad_edits_are_named() {
    let (layout, grid_ids, keep) = grid();
    let s = sampler(4, 0, Guidance::Off, Temperature::default());
    let mut ids = batch_of(&grid_ids, 3);
    for strength in [0.0, -0.5, 1.5, f32::NAN] {
        let err = s
            .prepare_edit(&mut ids, &keep, strength, &layout)
            .unwrap_err();
        assert!(
            matches!(err, SamplerError::InvalidStrength { .. }),
            "{strength}: {err}"
        );
    }
    let err = s
        .prepare_edit(&mut ids, &keep[1..], 1.0, &layout)
        .unwrap_err();
    assert!(
        matches!(err, SamplerError::ShapeMismatch { what: "keep", .. }),
        "{err}"
    );
    let err = s
        .prepare_edit(&mut ids, &[true; 30], 1.0, &layout)
        .unwrap_err();
    assert_eq!(err, SamplerError::NothingEditable);
    ids[31] = 20; // row 1, token 1: kept, but masked
    let err = s.prepare_edit(&mut ids, &keep, 1.0, &layout).unwrap_err();
    assert_eq!(
        err,
        SamplerError::KeptTokenNotACode {
            row: 1,
            token: 1,
            id: 20,
            vocab: 16
        }
    );
    let l = vec![0.0; layout.logits_len(Guidance::Off).unwrap()];
    let err = s.step_keeping(1, &mut ids, &l, &layout, &keep).unwrap_err();
    assert!(
        matches!(err, SamplerError::KeptTokenNotACode { .. }),
        "{err}"
    );
}
