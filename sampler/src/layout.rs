//! The shape of a step's ids and logits, for image grids and text rows alike.

use crate::random::counter_word;
use crate::{Guidance, SamplerError};

/// The shape of the ids a step works on, and the mask id of their modality.
///
/// Ids are `[B, n]` row-major (`n = h * w` for an image grid, flattened row-major; `n = L`
/// for text rows); logits are `[B, n, V]` row-major f32 (token-major: an image head's
/// `[B, V, h, w]` output must be transposed first), `[2B, n, V]` with guidance. The mask id
/// may be `>= V` (images: codes `0..V`, mask `V + 63`): then it is never drawn; if it is `< V`
/// (the text head holds a `<mask>` entry) the draw can produce it, as upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLayout {
    /// `B`: independent rows (prompts).
    pub batch: usize,
    /// `n`: tokens per row.
    pub tokens: usize,
    /// `V`: logits per token.
    pub vocab: usize,
    /// The id of a masked token.
    pub mask_id: u32,
}

impl TokenLayout {
    /// Text rows: ids `[batch, len]`.
    pub fn text(batch: usize, len: usize, vocab: usize, mask_id: u32) -> Self {
        Self {
            batch,
            tokens: len,
            vocab,
            mask_id,
        }
    }

    /// An image id grid `[batch, height, width]`, flattened row-major to `[batch, height * width]`.
    pub fn image(
        batch: usize,
        height: usize,
        width: usize,
        vocab: usize,
        mask_id: u32,
    ) -> Result<Self, SamplerError> {
        let tokens = height
            .checked_mul(width)
            .ok_or(SamplerError::LayoutTooLarge {
                what: "height * width",
            })?;
        Ok(Self::text(batch, tokens, vocab, mask_id))
    }

    /// Checks that no dimension is zero and that all sizes fit the sampler's counters.
    pub fn validate(&self) -> Result<(), SamplerError> {
        let Self {
            batch,
            tokens,
            vocab,
            ..
        } = *self;
        if batch == 0 || tokens == 0 || vocab == 0 {
            return Err(SamplerError::EmptyLayout {
                batch,
                tokens,
                vocab,
            });
        }
        counter_word(batch, "batch")?;
        counter_word(tokens, "tokens")?;
        counter_word(vocab, "vocab")?;
        // The guided (doubled) logits length must fit usize too.
        self.logits_len(Guidance::Cfg { scale: 1.0 }).map(|_| ())
    }

    /// `B * n`, the length of the ids.
    pub fn ids_len(&self) -> Result<usize, SamplerError> {
        self.batch
            .checked_mul(self.tokens)
            .ok_or(SamplerError::LayoutTooLarge {
                what: "batch * tokens",
            })
    }

    /// `G * B * n * V`, the length of the logits (`G = 2` with guidance).
    pub fn logits_len(&self, guidance: Guidance) -> Result<usize, SamplerError> {
        self.ids_len()?
            .checked_mul(self.vocab)
            .and_then(|len| len.checked_mul(guidance.batch_factor()))
            .ok_or(SamplerError::LayoutTooLarge {
                what: "logits length",
            })
    }

    /// The starting ids: every token masked, `[B, n]`.
    pub fn all_masked(&self) -> Result<Vec<u32>, SamplerError> {
        Ok(vec![self.mask_id; self.ids_len()?])
    }
}
