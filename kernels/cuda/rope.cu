// rope.cu: per-head RMSNorm of q or k, then the rotary positions, in one pass.
//
// x: bf16, element (row, h, d) at `map(row) * x_stride + h * Dh + d` (the RowMap picks the text
// or image part of a joint [B, L + N] buffer); out likewise with out_stride (may equal x).
// The rotary tables `cos, sin [seq, Dh]` (f32, each value repeated for both members of a pair,
// as kernels::cpu::rope::rope_tables) are indexed by the physical row modulo `seq`, i.e. the
// token's position in its batch item's joint sequence. Either step can be off: `weight = 0`
// skips the norm, `cos = 0` the rotation. Accumulation f32.
//
// Design. One warp per (row, head), 8 per 256-thread block; lane l owns the pairs l, l + 32, ...
// (one 32-bit load of two bf16 each). The sum of squares is a warp butterfly; the rotated pair
// `(x0 c - x1 s, x1 c + x0 s)` is written back as one 32-bit store.
//
// Limits. Bandwidth: 4 bytes read and written per element plus 8 bytes of tables per element
// (L2-resident); q and k of the 1024 px step (2 x 1101 x 1024 each) take ~ 3 us.
#ifndef MUDDIT_COMMON_CUH
#include "common.cuh"
#endif

struct QkNormRopeParams {
    u64 x;
    u64 out;
    u64 weight;  // f32 [Dh] or 0
    u64 cos;     // f32 [seq, Dh] or 0
    u64 sin;     // f32 [seq, Dh]
    i32 rows;
    i32 heads;
    i32 head_dim;
    i32 seq;
    i32 x_stride;
    i32 out_stride;
    RowMap map;
    float eps;
    i32 pad_;
};

extern "C" __global__ void __launch_bounds__(256) qk_norm_rope_bf16(QkNormRopeParams p) {
    const int lane = lane_id();
    const i64 task = warp_task();
    if (task >= (i64)p.rows * p.heads) return;
    const int row = (int)(task / p.heads), h = (int)(task % p.heads);
    const i64 phys = map_row(p.map, row);
    const u32* x = reinterpret_cast<const u32*>(reinterpret_cast<const bf16*>(p.x) +
                                                phys * p.x_stride + h * p.head_dim);
    u32* out = reinterpret_cast<u32*>(reinterpret_cast<bf16*>(p.out) + phys * p.out_stride +
                                      h * p.head_dim);
    const int pairs = p.head_dim / 2;
    float inv = 1.0f;
    if (p.weight) {
        float ss = 0.0f;
        for (int i = lane; i < pairs; i += MUDDIT_WARP) {
            const u32 v = x[i];
            ss += bf16x2_lo(v) * bf16x2_lo(v) + bf16x2_hi(v) * bf16x2_hi(v);
        }
        inv = rsqrtf(warp_sum(ss) / (float)p.head_dim + p.eps);
    }
    const float* w = reinterpret_cast<const float*>(p.weight);
    const i64 pos = (phys % p.seq) * p.head_dim;
    for (int i = lane; i < pairs; i += MUDDIT_WARP) {
        const u32 v = x[i];
        float x0 = bf16x2_lo(v), x1 = bf16x2_hi(v);
        if (w) {
            x0 = x0 * inv * w[2 * i];
            x1 = x1 * inv * w[2 * i + 1];
        }
        if (p.cos) {
            const float* c = reinterpret_cast<const float*>(p.cos) + pos;
            const float* s = reinterpret_cast<const float*>(p.sin) + pos;
            const float r0 = x0 * c[2 * i] - x1 * s[2 * i];
            const float r1 = x1 * c[2 * i + 1] + x0 * s[2 * i + 1];
            x0 = r0;
            x1 = r1;
        }
        out[i] = pack_bf16x2(x0, x1);
    }
}
MUDDIT_EXPORT(qk_norm_rope_bf16, QkNormRopeParams)
