// vq.cu: the VQ-VAE's non-GEMM kernels: GroupNorm (+ SiLU), 2x nearest upsampling and the
// nearest-codebook search of the encoder. Its convolutions are conv2d_bf16 in gemm.cu.
//
// GroupNorm over `x [B, P, C]` bf16 (P pixels, channel c in group c / (C / G)), affine f32
// weight and bias, optional SiLU, in two kernels:
//   group_norm_stats_bf16  grid (chunks, G, B): each block sums one pixel band of one group,
//                          shifted by the group's first element (so the variance keeps its
//                          digits whatever the mean), f32 within the block, written as f64
//                          with the shift;
//   group_norm_apply_bf16  grid (blocks, B): each block first folds its item's partial sums
//                          (f64) into mean and 1/std per group, then normalises a grid-stride
//                          share of the item's elements.
// Bandwidth-bound: two reads and one write of a bf16 tensor; the largest (the 512 px decoder's
// last level, [1, 262144, 128]) moves 200 MB: ~ 60 us at 3.35 TB/s.
//
// Nearest codebook entry of each latent `z [P, E]` (f32) among `codebook [V, E]` (f32): the
// exact squared distance, summed in f64 in the order of the CPU's re-scoring
// (engine::vqvae::nearest_codes), lowest id on ties, so CPU and device pick the same ids.
// 8 pixels per 256-thread block (one warp each); codebook tiles of 32 rows are staged in
// shared memory and each lane scores one row of the tile. f64 arithmetic: P V E = 0.5 G
// multiply-adds at 512 px, ~ 20 us on an H100.
#ifndef MUDDIT_COMMON_CUH
#include "common.cuh"
#endif

struct GroupNormParams {
    u64 x;       // bf16 [B, P, C]
    u64 out;     // bf16 [B, P, C], may be x
    u64 weight;  // f32 [C]
    u64 bias;    // f32 [C]
    u64 stats;   // f64 [B, G, chunks, 3] workspace: shifted sum, shifted sum of squares, shift
    i32 batch;
    i32 pixels;
    i32 channels;
    i32 groups;
    i32 chunks;
    i32 silu;
    float eps;
    i32 pad_;
};

#define GN_MAX_GROUPS 128

extern "C" __global__ void __launch_bounds__(256) group_norm_stats_bf16(GroupNormParams p) {
    __shared__ float scratch[32];
    const int chunk = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int cpg = p.channels / p.groups;
    const int per = (p.pixels + p.chunks - 1) / p.chunks;
    const int begin = chunk * per, end = imin(p.pixels, begin + per);
    const i64 item = (i64)b * p.pixels * p.channels;
    const float shift = load_bf16(p.x, item + g * cpg);
    float s1 = 0.0f, s2 = 0.0f;
    const i64 count = end > begin ? (i64)(end - begin) * cpg : 0;
    for (i64 i = threadIdx.x; i < count; i += blockDim.x) {
        const i64 pix = begin + i / cpg;
        const float v = load_bf16(p.x, item + pix * p.channels + g * cpg + i % cpg) - shift;
        s1 += v;
        s2 += v * v;
    }
    s1 = block_sum(s1, scratch);
    s2 = block_sum(s2, scratch);
    if (threadIdx.x == 0) {
        double* st = reinterpret_cast<double*>(p.stats) + (((i64)b * p.groups + g) * p.chunks + chunk) * 3;
        st[0] = (double)s1;
        st[1] = (double)s2;
        st[2] = (double)shift;
    }
}
MUDDIT_EXPORT(group_norm_stats_bf16, GroupNormParams)

extern "C" __global__ void __launch_bounds__(256) group_norm_apply_bf16(GroupNormParams p) {
    __shared__ float mean[GN_MAX_GROUPS], rstd[GN_MAX_GROUPS];
    const int b = blockIdx.y;
    const int cpg = p.channels / p.groups;
    const i64 item = (i64)b * p.pixels * p.channels;
    for (int g = threadIdx.x; g < p.groups; g += blockDim.x) {
        // The shift comes from the workspace: with out == x, x may already be overwritten.
        const double* st = reinterpret_cast<const double*>(p.stats) + ((i64)b * p.groups + g) * p.chunks * 3;
        double s1 = 0.0, s2 = 0.0;
        for (int c = 0; c < p.chunks; c++) {
            s1 += st[3 * c];
            s2 += st[3 * c + 1];
        }
        const double n = (double)p.pixels * cpg;
        const double mc = s1 / n;
        const double var = s2 / n - mc * mc;
        mean[g] = (float)(st[2] + mc);
        rstd[g] = (float)(1.0 / sqrt((var > 0.0 ? var : 0.0) + (double)p.eps));
    }
    __syncthreads();
    const float* w = reinterpret_cast<const float*>(p.weight);
    const float* bias = reinterpret_cast<const float*>(p.bias);
    const i64 total = (i64)p.pixels * p.channels;
    for (i64 i = grid_thread(); i < total; i += grid_threads()) {
        const int c = (int)(i % p.channels), g = c / cpg;
        float y = (load_bf16(p.x, item + i) - mean[g]) * rstd[g] * w[c] + bias[c];
        if (p.silu) y = silu_f32(y);
        store_bf16(p.out, item + i, y);
    }
}
MUDDIT_EXPORT(group_norm_apply_bf16, GroupNormParams)

// out [B, 2h, 2w, c] = x [B, h, w, c] repeated 2 x 2 (nearest), bf16.
struct Upsample2xParams {
    u64 x;
    u64 out;
    i32 batch;
    i32 h;
    i32 w;
    i32 c;
};

extern "C" __global__ void __launch_bounds__(256) upsample2x_bf16(Upsample2xParams p) {
    const i64 total = (i64)p.batch * 4 * p.h * p.w * p.c;
    const bf16* x = reinterpret_cast<const bf16*>(p.x);
    bf16* out = reinterpret_cast<bf16*>(p.out);
    for (i64 i = grid_thread(); i < total; i += grid_threads()) {
        const int ch = (int)(i % p.c);
        i64 r = i / p.c;
        const int ox = (int)(r % (2 * p.w));
        r /= 2 * p.w;
        const int oy = (int)(r % (2 * p.h));
        const i64 b = r / (2 * p.h);
        out[i] = x[((b * p.h + oy / 2) * p.w + ox / 2) * p.c + ch];
    }
}
MUDDIT_EXPORT(upsample2x_bf16, Upsample2xParams)

struct VqNearestParams {
    u64 z;         // f32 [P, E]
    u64 codebook;  // f32 [V, E]
    u64 ids;       // i32 [P]
    i32 pixels;
    i32 entries;
    i32 dim;
    i32 pad_;
};

#define VQ_PIXELS 8
#define VQ_TILE 32

extern "C" __global__ void __launch_bounds__(VQ_PIXELS * 32) vq_nearest_f32(VqNearestParams p) {
    MUDDIT_DYNAMIC_SHARED(float, tile);  // [VQ_TILE, E]
    const int lane = threadIdx.x % MUDDIT_WARP, warp = threadIdx.x / MUDDIT_WARP;
    const int pix = blockIdx.x * VQ_PIXELS + warp;
    const float* z = reinterpret_cast<const float*>(p.z) + (i64)(pix < p.pixels ? pix : 0) * p.dim;
    const float* cb = reinterpret_cast<const float*>(p.codebook);
    double best = 0.0;
    int best_id = -1;
    for (int t0 = 0; t0 < p.entries; t0 += VQ_TILE) {
        const int rows = imin(VQ_TILE, p.entries - t0);
        for (int i = threadIdx.x; i < rows * p.dim; i += blockDim.x) tile[i] = cb[(i64)t0 * p.dim + i];
        __syncthreads();
        if (lane < rows) {
            const float* e = tile + lane * p.dim;
            double d = 0.0;
            for (int k = 0; k < p.dim; k++) {
                const double diff = (double)z[k] - (double)e[k];
                d = __dadd_rn(d, diff * diff);
            }
            if (best_id < 0 || d < best) {
                best = d;
                best_id = t0 + lane;
            }
        }
        __syncthreads();
    }
    for (int o = 16; o > 0; o >>= 1) {
        const double od = __shfl_xor_sync(0xFFFFFFFFu, best, o);
        const int oi = __shfl_xor_sync(0xFFFFFFFFu, best_id, o);
        if (oi >= 0 && (best_id < 0 || od < best || (od == best && oi < best_id))) {
            best = od;
            best_id = oi;
        }
    }
    if (pix < p.pixels && lane == 0) reinterpret_cast<i32*>(p.ids)[pix] = best_id;
}
MUDDIT_EXPORT(vq_nearest_f32, VqNearestParams)
