// elementwise.cu: embeddings, activations, casts, guidance and the sinusoidal embedding.
//
// Design. Grid-stride loops, one element (or one 32-bit pair) per thread and step, 256-thread
// blocks. All are bandwidth-bound and small next to the GEMMs: the largest, the GELU of a
// [2 x 1101, 4096] activation when not fused into a GEMM epilogue, moves 36 MB (~ 11 us).
// Accumulation f32.
#ifndef MUDDIT_COMMON_CUH
#include "common.cuh"
#endif

// Embedding rows: out[r, :] = table[ids[r], :] (+ pos[r % seq, :] when `pos`), table and pos
// bf16 `[*, d]`; out bf16 or, with `out_f32`, f32 (the CLIP residual stream). Ids are checked
// on the host.
struct EmbeddingParams {
    u64 ids;  // i32 [rows]
    u64 table;
    u64 pos;
    u64 out;
    i32 rows;
    i32 d;
    i32 seq;
    i32 out_f32;
};

extern "C" __global__ void __launch_bounds__(256) embedding_bf16(EmbeddingParams p) {
    const i64 total = (i64)p.rows * p.d;
    const i32* ids = reinterpret_cast<const i32*>(p.ids);
    for (i64 i = grid_thread(); i < total; i += grid_threads()) {
        const int r = (int)(i / p.d), c = (int)(i % p.d);
        float v = load_bf16(p.table, (i64)ids[r] * p.d + c);
        if (p.pos) v += load_bf16(p.pos, (i64)(r % p.seq) * p.d + c);
        store_elem(p.out, i, v, p.out_f32);
    }
}
MUDDIT_EXPORT(embedding_bf16, EmbeddingParams)

// y = act(x) over n elements; x and y f32 or bf16 each (`x_f32`, `y_f32`), y may equal x.
struct ActParams {
    u64 x;
    u64 y;
    i64 n;
    i32 act;
    i32 x_f32;
    i32 y_f32;
    i32 pad_;
};

extern "C" __global__ void __launch_bounds__(256) act_bf16(ActParams p) {
    for (i64 i = grid_thread(); i < p.n; i += grid_threads())
        store_elem(p.y, i, activate(p.act, load_elem(p.x, i, p.x_f32)), p.y_f32);
}
MUDDIT_EXPORT(act_bf16, ActParams)

// Classifier-free guidance on activations before a linear head: out[i] = u[i] + scale (c[i] -
// u[i]) for x = [u; c] bf16 (n elements each), in f32, out bf16 [n].
struct GuideParams {
    u64 x;
    u64 out;
    i64 n;
    float scale;
    i32 pad_;
};

extern "C" __global__ void __launch_bounds__(256) guide_bf16(GuideParams p) {
    for (i64 i = grid_thread(); i < p.n; i += grid_threads()) {
        const float u = load_bf16(p.x, i), c = load_bf16(p.x, p.n + i);
        store_elem(p.out, i, u + p.scale * (c - u), false);
    }
}
MUDDIT_EXPORT(guide_bf16, GuideParams)

// The diffusers sinusoidal embedding (flip_sin_to_cos, shift 0, max period 10000):
// out[r, k] = cos(x[r] f_k), out[r, half + k] = sin(x[r] f_k), f_k = exp(-ln(10000) k / half),
// in f32 as kernels' CPU reference (engine::nn::sinusoidal_embedding). x f32 [rows]; out f32
// [rows, 2 half] with row stride `out_stride` (the micro-conditions write 5 side by side).
struct SinEmbedParams {
    u64 x;
    u64 out;
    i32 rows;
    i32 half;
    i32 out_stride;
    float scale;  // x is multiplied by this first (1000 for the timestep)
};

extern "C" __global__ void __launch_bounds__(256) sin_embed_f32(SinEmbedParams p) {
    const i64 total = (i64)p.rows * p.half;
    for (i64 i = grid_thread(); i < total; i += grid_threads()) {
        const int r = (int)(i / p.half), k = (int)(i % p.half);
        const float f = expf(-9.210340371976184f * (float)k / (float)p.half);
        const float x = reinterpret_cast<const float*>(p.x)[r] * p.scale;
        float* out = reinterpret_cast<float*>(p.out) + (i64)r * p.out_stride;
        out[k] = cosf(x * f);
        out[p.half + k] = sinf(x * f);
    }
}
MUDDIT_EXPORT(sin_embed_f32, SinEmbedParams)
