//! The sampler's error type: every invalid parameter or input is one of these, never a panic.

/// What can go wrong when building a [`crate::Sampler`] or running a step.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    /// A schedule needs at least one step.
    #[error("the number of steps must be at least 1, got 0")]
    ZeroSteps,

    /// The step count must fit the random source's 32-bit step counter.
    #[error("{steps} steps is more than the random source's 32-bit step counter allows")]
    TooManySteps { steps: usize },

    /// A step index at or past the end of the schedule.
    #[error("step {step} is out of range for a {steps}-step schedule")]
    StepOutOfRange { step: usize, steps: usize },

    /// Guidance scales must be finite and not negative.
    #[error("the guidance scale must be finite and >= 0, got {scale}")]
    InvalidGuidance { scale: f32 },

    /// A temperature that is NaN or infinite.
    #[error("the temperature {what} must be finite, got {value}")]
    InvalidTemperature { what: &'static str, value: f32 },

    /// A `masking_schedule` name this crate does not know.
    #[error("unknown masking schedule {name:?} (known: \"cosine\", \"linear\")")]
    UnknownSchedule { name: String },

    /// A layout with a zero dimension.
    #[error("empty layout: batch {batch}, tokens {tokens} and vocab {vocab} must all be >= 1")]
    EmptyLayout {
        batch: usize,
        tokens: usize,
        vocab: usize,
    },

    /// A layout whose sizes overflow, or do not fit the random source's 32-bit counters.
    #[error("layout too large: {what} does not fit the sampler's 32-bit counters or usize")]
    LayoutTooLarge { what: &'static str },

    /// A buffer whose length does not match the layout.
    #[error("{what} has {got} elements, expected {expected} ({shape})")]
    ShapeMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
        shape: String,
    },

    /// The first step needs at least one masked token in every row.
    #[error("row {row} has no masked token to start from")]
    NoMaskedToken { row: usize },

    /// A token id that is neither the mask id nor a valid vocabulary entry.
    #[error("id {id} at row {row}, token {token} is neither the mask id {mask_id} nor below the vocabulary size {vocab}")]
    IdOutOfRange {
        row: usize,
        token: usize,
        id: u32,
        vocab: usize,
        mask_id: u32,
    },

    /// A masked token whose logits hold NaN or +inf, or are all -inf.
    #[error("the logits of masked token {token} in row {row} hold NaN or +inf, or are all -inf")]
    NonFiniteLogits { row: usize, token: usize },

    /// A supplied uniform outside `[0, 1]`.
    #[error("{what} uniform {index} is {value}, outside [0, 1]")]
    InvalidUniform {
        what: &'static str,
        index: usize,
        value: f32,
    },

    /// An edit's strength outside (0, 1].
    #[error("the edit strength must be in (0, 1], got {strength}")]
    InvalidStrength { strength: f32 },

    /// A kept position of an edit must hold a code, never the mask id.
    #[error("kept token {token} of row {row} holds {id}, not a code below {vocab}")]
    KeptTokenNotACode {
        row: usize,
        token: usize,
        id: u32,
        vocab: usize,
    },

    /// An edit whose keep grid keeps every position.
    #[error("the edit keeps every token: nothing to regenerate")]
    NothingEditable,

    /// A step that re-masks cannot work on rows of a single token (upstream fails there too).
    #[error("a step that re-masks needs at least 2 tokens per row, got {tokens}")]
    TooFewTokens { tokens: usize },
}
