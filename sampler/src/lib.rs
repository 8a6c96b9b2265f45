//! The masked discrete-diffusion sampler (work in progress).
