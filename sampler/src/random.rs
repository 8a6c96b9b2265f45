//! The seeded, counter-based random source: Philox4x32-10, two uniforms per token and step.
//!
//! Every token of every step gets its own Philox block, addressed by its coordinates, so the
//! numbers do not depend on thread count, work split or backend; a GPU kernel computes the
//! same block from the same `(seed, step, row, token)`.

use crate::SamplerError;

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;
const PHILOX_ROUNDS: usize = 10;

/// The Philox4x32-10 block function of Salmon et al. (2011), as in Random123 and cuRAND.
///
/// One round: `(hi0, lo0) = M0 * c0`, `(hi1, lo1) = M1 * c2` (32x32 -> 64-bit products),
/// `c = [hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0]`; the key is bumped by `(W0, W1)` (wrapping)
/// before every round but the first.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..PHILOX_ROUNDS {
        if round > 0 {
            k = [k[0].wrapping_add(PHILOX_W0), k[1].wrapping_add(PHILOX_W1)];
        }
        let p0 = u64::from(PHILOX_M0) * u64::from(c[0]);
        let p1 = u64::from(PHILOX_M1) * u64::from(c[2]);
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// A uniform in `[0, 1)` from 32 random bits: the top 24 bits times `2^-24` (exact in f32).
pub fn uniform_from_bits(bits: u32) -> f32 {
    (bits >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// The two uniforms of one token at one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenUniforms {
    /// Drives the categorical draw (inverse CDF).
    pub draw: f32,
    /// Drives the Gumbel noise on the re-masking confidence.
    pub gumbel: f32,
}

/// How the rows of a batch share the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Row `b` uses key `seed` and counter word 1 = `b` (captioning and VQA, the reference
    /// fixtures' layout).
    InCounter,
    /// Row `b` uses key `seed + b` (wrapping) and counter word 1 = 0, so row `b` of a batch
    /// draws exactly what row 0 of a run seeded `seed + b` draws (each image reproducible alone).
    InKey,
}

/// The seeded random source of the sampler.
///
/// Token `token` of batch row `row` at step `step` (0-based, the step index, not the
/// timestep) uses the Philox4x32-10 block of counter `[token, row, step, 0]` and key
/// `[seed as u32, (seed >> 32) as u32]` ([`RandomSource::new`]), or with
/// [`RandomSource::per_row`] the block of counter `[token, 0, step, 0]` and the key of
/// `seed + row`; output word 0 gives the draw uniform and word 1 the Gumbel uniform, each
/// through [`uniform_from_bits`]. Words 2 and 3 are unused. Under guidance `row` indexes the
/// combined batch `B`, not `2B`. The choice of the tokens an edit masks at its start uses the
/// block of counter `[token, row, 0, 1]` (or `[token, 0, 0, 1]` per row), word 0
/// ([`RandomSource::edit_uniform`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomSource {
    seed: u64,
    rows: Rows,
}

impl RandomSource {
    /// The source for `seed`, rows told apart by the counter.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rows: Rows::InCounter,
        }
    }

    /// The source for `seed` where row `b` is seeded `seed + b` (wrapping).
    pub fn per_row(seed: u64) -> Self {
        Self {
            seed,
            rows: Rows::InKey,
        }
    }

    /// The seed of row `row`: `seed`, or `seed + row` per row.
    pub fn row_seed(&self, row: u32) -> u64 {
        match self.rows {
            Rows::InCounter => self.seed,
            Rows::InKey => self.seed.wrapping_add(u64::from(row)),
        }
    }

    /// The block of `[token, row, word2, word3]`, the row placed as the source says.
    fn block(&self, token: u32, row: u32, word2: u32, word3: u32) -> [u32; 4] {
        let seed = self.row_seed(row);
        let row_word = match self.rows {
            Rows::InCounter => row,
            Rows::InKey => 0,
        };
        philox4x32_10(
            [token, row_word, word2, word3],
            [seed as u32, (seed >> 32) as u32],
        )
    }

    /// The uniforms of one token.
    pub fn token_uniforms(&self, step: u32, row: u32, token: u32) -> TokenUniforms {
        let w = self.block(token, row, step, 0);
        TokenUniforms {
            draw: uniform_from_bits(w[0]),
            gumbel: uniform_from_bits(w[1]),
        }
    }

    /// The uniform that ranks token `token` of row `row` when an edit picks the tokens it
    /// masks at its start (the lowest are masked).
    pub fn edit_uniform(&self, row: u32, token: u32) -> f32 {
        uniform_from_bits(self.block(token, row, 0, 1)[0])
    }

    /// Fills the uniforms of one step for `batch` rows of `tokens` tokens, e.g. to hand them
    /// to a device kernel. Shapes: `draw`, `gumbel` `[batch, tokens]`, row-major.
    pub fn fill_step(
        &self,
        step: usize,
        batch: usize,
        tokens: usize,
        draw: &mut [f32],
        gumbel: &mut [f32],
    ) -> Result<(), SamplerError> {
        let step = counter_word(step, "step")?;
        counter_word(batch, "batch")?;
        counter_word(tokens, "tokens")?;
        let len = batch
            .checked_mul(tokens)
            .ok_or(SamplerError::LayoutTooLarge {
                what: "batch * tokens",
            })?;
        for (what, got) in [
            ("draw uniforms", draw.len()),
            ("gumbel uniforms", gumbel.len()),
        ] {
            if got != len {
                return Err(SamplerError::ShapeMismatch {
                    what,
                    expected: len,
                    got,
                    shape: format!("[B={batch}, n={tokens}]"),
                });
            }
        }
        let rows = draw
            .chunks_exact_mut(tokens)
            .zip(gumbel.chunks_exact_mut(tokens));
        for (row, (draw_row, gumbel_row)) in rows.enumerate() {
            for (token, (d, g)) in draw_row.iter_mut().zip(gumbel_row.iter_mut()).enumerate() {
                let u = self.token_uniforms(step, row as u32, token as u32);
                (*d, *g) = (u.draw, u.gumbel);
            }
        }
        Ok(())
    }
}

/// `value` as a 32-bit counter word, or an error naming it.
pub(crate) fn counter_word(value: usize, what: &'static str) -> Result<u32, SamplerError> {
    u32::try_from(value).map_err(|_| SamplerError::LayoutTooLarge { what })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's known-answer vectors for Philox4x32-10: (counter, key, output).
    const KAT: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        (
            [0; 4],
            [0; 2],
            [0x6627_E8D5, 0xE169_C58D, 0xBC57_AC4C, 0x9B00_DBD8],
        ),
        (
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408F_276D, 0x41C8_3B0E, 0xA20B_C7C6, 0x6D54_51FD],
        ),
        (
            [0x243F_6A88, 0x85A3_08D3, 0x1319_8A2E, 0x0370_7344],
            [0xA409_3822, 0x299F_31D0],
            [0xD16C_FE09, 0x94FD_CCEB, 0x5001_E420, 0x2412_6EA1],
        ),
    ];

    #[test]
    fn philox_known_answers() {
        for (counter, key, want) in KAT {
            assert_eq!(philox4x32_10(counter, key), want, "counter {counter:x?}");
        }
    }

    #[test]
    fn uniforms_cover_zero_to_below_one() {
        assert_eq!(uniform_from_bits(0), 0.0);
        assert_eq!(uniform_from_bits(u32::MAX), 1.0 - 2f32.powi(-24));
        assert_eq!(uniform_from_bits(0x8000_0000), 0.5);
    }

    #[test]
    fn fill_step_matches_token_uniforms() {
        let source = RandomSource::new(0x1234_5678_9ABC_DEF0);
        let (batch, tokens) = (3, 77);
        let mut draw = vec![0.0; batch * tokens];
        let mut gumbel = vec![0.0; batch * tokens];
        source
            .fill_step(4, batch, tokens, &mut draw, &mut gumbel)
            .unwrap();
        let u = source.token_uniforms(4, 2, 76);
        assert_eq!((draw[2 * 77 + 76], gumbel[2 * 77 + 76]), (u.draw, u.gumbel));
        assert_ne!(draw, gumbel);
        let mean = draw.iter().sum::<f32>() / draw.len() as f32;
        assert!(
            (mean - 0.5).abs() < 0.05,
            "mean of the draw uniforms {mean}"
        );
    }

    #[test]
    fn per_row_seeds_give_row_b_the_draws_of_seed_plus_b() {
        let seed = u64::MAX - 1; // wraps at row 2
        let batch = RandomSource::per_row(seed);
        for row in 0..4u32 {
            let alone = RandomSource::per_row(seed.wrapping_add(u64::from(row)));
            assert_eq!(batch.row_seed(row), alone.row_seed(0));
            for (step, token) in [(0, 0), (3, 17)] {
                assert_eq!(
                    batch.token_uniforms(step, row, token),
                    alone.token_uniforms(step, 0, token)
                );
            }
            assert_eq!(batch.edit_uniform(row, 5), alone.edit_uniform(0, 5));
        }
        // Row 0 is the shared source's row 0; other rows differ from it.
        let shared = RandomSource::new(seed);
        assert_eq!(
            batch.token_uniforms(2, 0, 9),
            shared.token_uniforms(2, 0, 9)
        );
        assert_ne!(
            batch.token_uniforms(2, 1, 9),
            shared.token_uniforms(2, 1, 9)
        );
        assert_ne!(
            shared.edit_uniform(0, 9),
            shared.token_uniforms(0, 0, 9).draw
        );
    }

    #[test]
    fn fill_step_rejects_wrong_lengths() {
        let source = RandomSource::new(1);
        let mut short = vec![0.0; 5];
        let mut ok = vec![0.0; 6];
        let err = source.fill_step(0, 2, 3, &mut short, &mut ok).unwrap_err();
        assert!(matches!(
            err,
            SamplerError::ShapeMismatch {
                expected: 6,
                got: 5,
                ..
            }
        ));
    }
}
