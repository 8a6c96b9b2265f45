// norm.cu: RMSNorm and LayerNorm (with adaptive modulation or affine weights) over rows.
//
// Design. One warp per row, 8 rows per 256-thread block; lanes stride over the row's columns
// so every load of the warp is one contiguous run. Sums are f32 per lane, combined with a
// butterfly shuffle; LayerNorm takes two passes over the row (mean, then the mean of squared
// deviations, exact whatever the mean) and a third to write, the rereads hitting L1.
// Accumulation f32; storage bf16 (activations) and f32 (the residual stream, weights, mods).
//
// Limits. Bandwidth: one read and one write per element (LayerNorm reads f32: 6 bytes per
// element in and out). A [2 x 333, 1024] LayerNorm moves 4 MB: about 1.2 us at 3.35 TB/s; the
// grid (84 blocks of 8 rows) fills the H100's 132 SMs only partly at these sizes, so expect
// 40-60% of bandwidth.
#ifndef MUDDIT_COMMON_CUH
#include "common.cuh"
#endif

// RMSNorm: out[r, c] = x[r, c] * rsqrt(mean_c(x[r]^2) + eps) * weight[c].
// x, out: bf16 `[rows, d]` with row strides (elements); weight: f32 `[d]`.
struct RmsNormParams {
    u64 x, out, weight;
    i32 rows, d, x_stride, out_stride;
    float eps;
    i32 pad_;
};

extern "C" __global__ void __launch_bounds__(256) rms_norm_bf16(RmsNormParams p) {
    const int lane = lane_id();
    const i64 row = warp_task();
    if (row >= p.rows) return;
    const bf16* x = reinterpret_cast<const bf16*>(p.x) + (i64)row * p.x_stride;
    bf16* out = reinterpret_cast<bf16*>(p.out) + (i64)row * p.out_stride;
    const float* w = reinterpret_cast<const float*>(p.weight);
    float ss = 0.0f;
    for (int c = lane; c < p.d; c += MUDDIT_WARP) {
        float v = bf16_to_f32(x[c]);
        ss += v * v;
    }
    ss = warp_sum(ss);
    const float inv = rsqrtf(ss / (float)p.d + p.eps);
    for (int c = lane; c < p.d; c += MUDDIT_WARP) out[c] = f32_to_bf16(bf16_to_f32(x[c]) * inv * w[c]);
}
MUDDIT_EXPORT(rms_norm_bf16, RmsNormParams)

// LayerNorm (biased variance, no affine of its own) of an f32 row, then
// out[r, c] = norm * (scale_add + scale[item, c]) + shift[item, c], item = r / rows_per_item.
// - adaptive modulation: scale_add = 1, scale/shift = chunks of the `[B, n * D]` mods, item_stride
//   = n * D;
// - affine weights (CLIP): scale_add = 0, scale = weight, shift = bias, item_stride = 0;
// - plain (the text head): scale = shift = 0 (null), scale_add = 1.
// x: f32 `[rows, d]`; out: bf16 `[rows, d]`; strides in elements.
struct LayerNormParams {
    u64 x, out, scale, shift;
    i32 rows, d, x_stride, out_stride;
    i32 rows_per_item, item_stride;
    float scale_add, eps;
};

extern "C" __global__ void __launch_bounds__(256) layer_norm_f32(LayerNormParams p) {
    const int lane = lane_id();
    const i64 row = warp_task();
    if (row >= p.rows) return;
    const float* x = reinterpret_cast<const float*>(p.x) + (i64)row * p.x_stride;
    bf16* out = reinterpret_cast<bf16*>(p.out) + (i64)row * p.out_stride;
    const i64 item = row / p.rows_per_item * p.item_stride;
    const float* scale = p.scale ? reinterpret_cast<const float*>(p.scale) + item : nullptr;
    const float* shift = p.shift ? reinterpret_cast<const float*>(p.shift) + item : nullptr;
    float s = 0.0f;
    for (int c = lane; c < p.d; c += MUDDIT_WARP) s += x[c];
    const float mean = warp_sum(s) / (float)p.d;
    float ss = 0.0f;
    for (int c = lane; c < p.d; c += MUDDIT_WARP) {
        float v = x[c] - mean;
        ss += v * v;
    }
    const float inv = rsqrtf(warp_sum(ss) / (float)p.d + p.eps);
    for (int c = lane; c < p.d; c += MUDDIT_WARP) {
        float y = (x[c] - mean) * inv;
        y = y * (p.scale_add + (scale ? scale[c] : 0.0f)) + (shift ? shift[c] : 0.0f);
        out[c] = f32_to_bf16(y);
    }
}
MUDDIT_EXPORT(layer_norm_f32, LayerNormParams)
