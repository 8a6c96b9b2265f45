//! Invalid parameters and inputs give the matching error, never a panic.

use muddit_sampler::{
    Guidance, MaskSchedule, Sampler, SamplerConfig, SamplerError, StepUniforms, Temperature,
    TokenLayout,
};

/// A 2-row, 3-token layout with 4 codes and mask id 9, its ids and its logits (no guidance).
fn small() -> (Sampler, TokenLayout, Vec<u32>, Vec<f32>) {
    let layout = TokenLayout::text(2, 3, 4, 9);
    let sampler = Sampler::new(SamplerConfig::new(3)).unwrap();
    let logits = (0..24).map(|i| (i % 5) as f32 * 0.3).collect();
    (sampler, layout, layout.all_masked().unwrap(), logits)
}

fn config_error(config: SamplerConfig) -> SamplerError {
    Sampler::new(config).unwrap_err()
}

#[test]
fn invalid_configs_are_rejected() {
    assert_eq!(config_error(SamplerConfig::new(0)), SamplerError::ZeroSteps);
    for scale in [-1.0, f32::NAN, f32::INFINITY] {
        let config = SamplerConfig {
            guidance: Guidance::Cfg { scale },
            ..SamplerConfig::new(4)
        };
        assert!(
            matches!(config_error(config), SamplerError::InvalidGuidance { .. }),
            "{scale}"
        );
        assert!(matches!(
            Guidance::from_scale(scale),
            Err(SamplerError::InvalidGuidance { .. })
        ));
    }
    let temperatures = [
        Temperature::Scalar(f32::NAN),
        Temperature::Anneal {
            start: 2.0,
            end: f32::NEG_INFINITY,
        },
        Temperature::Anneal {
            start: f32::INFINITY,
            end: 0.0,
        },
    ];
    for temperature in temperatures {
        let config = SamplerConfig {
            temperature,
            ..SamplerConfig::new(4)
        };
        assert!(
            matches!(
                config_error(config),
                SamplerError::InvalidTemperature { .. }
            ),
            "{temperature:?}"
        );
    }
    let err = MaskSchedule::from_config_name("arccos").unwrap_err();
    assert_eq!(
        err,
        SamplerError::UnknownSchedule {
            name: "arccos".into()
        }
    );
    assert_eq!("linear".parse::<MaskSchedule>(), Ok(MaskSchedule::Linear));
}

#[test]
fn guidance_follows_upstream_threshold() {
    assert_eq!(Guidance::from_scale(1.0), Ok(Guidance::Off));
    assert_eq!(Guidance::from_scale(0.5), Ok(Guidance::Off));
    assert_eq!(Guidance::from_scale(9.0), Ok(Guidance::Cfg { scale: 9.0 }));
    assert!(!Guidance::Off.needs_uncond());
    assert!(Guidance::Cfg { scale: 2.0 }.needs_uncond());
    let mut out = [0.0; 2];
    Guidance::Cfg { scale: 3.0 }
        .combine(&[1.0, 2.0], &[2.0, 0.0], &mut out)
        .unwrap();
    assert_eq!(out, [4.0, -4.0]);
    let err = Guidance::Cfg { scale: 3.0 }
        .combine(&[1.0], &[2.0, 0.0], &mut out)
        .unwrap_err();
    assert!(matches!(
        err,
        SamplerError::ShapeMismatch {
            what: "uncond logits",
            ..
        }
    ));
    Guidance::Off.combine(&[], &[5.0, 6.0], &mut out).unwrap();
    assert_eq!(out, [5.0, 6.0]);
}

#[test]
fn shape_mismatches_are_reported() {
    let (sampler, layout, mut ids, logits) = small();
    let err = sampler
        .step(0, &mut ids, &logits[1..], &layout)
        .unwrap_err();
    assert!(
        matches!(
            err,
            SamplerError::ShapeMismatch {
                what: "logits",
                expected: 24,
                got: 23,
                ..
            }
        ),
        "{err}"
    );
    let err = sampler
        .step(0, &mut ids[1..], &logits, &layout)
        .unwrap_err();
    assert!(matches!(
        err,
        SamplerError::ShapeMismatch {
            what: "ids",
            expected: 6,
            got: 5,
            ..
        }
    ));
    // With guidance the logits must hold both halves.
    let guided = Sampler::new(SamplerConfig {
        guidance: Guidance::Cfg { scale: 2.0 },
        ..SamplerConfig::new(3)
    })
    .unwrap();
    let err = guided.step(0, &mut ids, &logits, &layout).unwrap_err();
    assert!(matches!(
        err,
        SamplerError::ShapeMismatch {
            what: "logits",
            expected: 48,
            ..
        }
    ));
    let empty = TokenLayout::text(0, 3, 4, 9);
    assert!(matches!(
        sampler.step(0, &mut [], &[], &empty),
        Err(SamplerError::EmptyLayout { .. })
    ));
    let huge = TokenLayout::image(1, usize::MAX, 2, 4, 9);
    assert!(matches!(huge, Err(SamplerError::LayoutTooLarge { .. })));
}

#[test]
fn bad_ids_and_steps_are_reported() {
    let (sampler, layout, mut ids, logits) = small();
    ids[4] = 4; // not a code (V = 4) and not the mask id
    let err = sampler.step(1, &mut ids, &logits, &layout).unwrap_err();
    assert_eq!(
        err,
        SamplerError::IdOutOfRange {
            row: 1,
            token: 1,
            id: 4,
            vocab: 4,
            mask_id: 9
        }
    );
    ids = vec![9, 9, 9, 1, 2, 3];
    let err = sampler.step(0, &mut ids, &logits, &layout).unwrap_err();
    assert_eq!(err, SamplerError::NoMaskedToken { row: 1 });
    let err = sampler.step(3, &mut ids, &logits, &layout).unwrap_err();
    assert_eq!(err, SamplerError::StepOutOfRange { step: 3, steps: 3 });
    assert!(sampler.model_timestep(3).is_err());
    assert!(sampler.mask_len(7, 10, 10).is_err());
}

#[test]
fn bad_logits_name_the_first_bad_masked_token() {
    let (sampler, layout, mut ids, mut logits) = small();
    logits[(3 + 2) * 4 + 1] = f32::NAN; // row 1, token 2
    logits[(3 + 1) * 4..(3 + 2) * 4].fill(f32::NEG_INFINITY); // row 1, token 1
    let before = ids.clone();
    let err = sampler.step(0, &mut ids, &logits, &layout).unwrap_err();
    assert_eq!(err, SamplerError::NonFiniteLogits { row: 1, token: 1 });
    assert_eq!(ids, before, "a failed step leaves the ids alone");
    // Bad logits of a known token are never read, as upstream discards them.
    ids[4] = 0;
    let err = sampler.step(0, &mut ids, &logits, &layout).unwrap_err();
    assert_eq!(err, SamplerError::NonFiniteLogits { row: 1, token: 2 });
    logits[(3 + 2) * 4] = f32::INFINITY;
    ids[5] = 0;
    sampler.step(0, &mut ids, &logits, &layout).unwrap();
}

#[test]
fn bad_uniforms_and_short_rows_are_reported() {
    let (sampler, layout, mut ids, logits) = small();
    let good = [0.5f32; 6];
    let bad = [0.5, 0.5, 1.5, 0.5, 0.5, 0.5];
    let mut step = |draw: &[f32], gumbel: &[f32]| {
        sampler
            .step_with_uniforms(0, &mut ids, &logits, &layout, StepUniforms { draw, gumbel })
            .unwrap_err()
    };
    assert_eq!(
        step(&good, &bad),
        SamplerError::InvalidUniform {
            what: "gumbel",
            index: 2,
            value: 1.5
        }
    );
    let err = step(&good[1..], &good);
    assert!(matches!(
        err,
        SamplerError::ShapeMismatch { what: "draw", .. }
    ));
    // One token per row cannot be re-masked (upstream fails); the last step alone is fine.
    let one = TokenLayout::text(1, 1, 4, 9);
    let err = sampler.step(0, &mut [9], &logits[..4], &one).unwrap_err();
    assert_eq!(err, SamplerError::TooFewTokens { tokens: 1 });
    let single = Sampler::new(SamplerConfig::new(1)).unwrap();
    let mut id = [9];
    single.step(0, &mut id, &logits[..4], &one).unwrap();
    assert!(id[0] < 4);
}

#[test]
fn schedule_helpers_follow_upstream() {
    let sampler = Sampler::new(SamplerConfig::new(4)).unwrap();
    let timesteps: Vec<f32> = (0..4).map(|s| sampler.model_timestep(s).unwrap()).collect();
    assert_eq!(timesteps, [0.75, 0.5, 0.25, 0.0]);
    assert_eq!(sampler.temperatures(), [2.0, 1.333_333_3, 0.666_666_7, 0.0]); // f32 linspace
                                                                              // cos(pi / 8) * 100 = 92.4; the row had only 50 masks, so at most 49; never below 1.
    assert_eq!(sampler.mask_len(0, 100, 100).unwrap(), 92);
    assert_eq!(sampler.mask_len(0, 100, 50).unwrap(), 49);
    assert_eq!(sampler.mask_len(2, 100, 1).unwrap(), 1);
    assert_eq!(sampler.mask_len(3, 100, 100).unwrap(), 0);
    let scalar = Temperature::Scalar(1.0).per_step(3);
    assert_eq!(scalar, [1.0, 0.505, 0.01]);
}
