// gemm.cu: C = epilogue(A · Wᵀ) on tensor cores, and the implicit-GEMM convolution.
//
// A is bf16 `[M, K]` (row stride `lda`, rows through a RowMap), W bf16 `[N, K]` (PyTorch
// `nn.Linear` layout, y = x Wᵀ), accumulation f32. Epilogues, fused into the store:
//   gemm_bf16           C bf16 = act(acc + bias) (+ res bf16, same layout as C)
//   gemm_f32out_bf16    C f32  = act(acc + bias)                      (logits, modulations)
//   gemm_residual_bf16  C f32 += gate[item, n] * (acc + bias)         (the gated residual)
//   conv2d_bf16         gemm_bf16 with A gathered on the fly from an NHWC image (im2col)
//   gemm_splitk_*       the same three epilogues over split-K partial sums (see Split-K)
//
// Design. A 128 x 128 output tile per 256-thread block, 8 warps as 2 (M) x 4 (N), each warp
// 64 x 32: 4 x 4 mma.sync m16n8k16 per 16-wide k step, 64 f32 accumulators per thread. K is
// walked in 32-wide slices through a 3-stage cp.async pipeline (the loads of slice k+2 fly
// while slice k is multiplied). Shared tiles keep rows of 32 bf16 padded to 40 (80 bytes): the
// 8 rows one ldmatrix phase reads then start on banks 0, 20, 8, 28, 16, 4, 24, 12 - no
// conflicts - and every 16-byte chunk stays aligned for cp.async. A and W fragments come from
// ldmatrix.x4 (no transpose: W's rows are B's columns). Out-of-range rows and k-chunks are
// zero-filled by cp.async, so any M, N and any K that is a multiple of 8 works.
// Dynamic shared memory: 3 stages x (128 + 128) x 40 x 2 bytes = 60 KiB (opt-in above 48 KiB).
//
// Limits. Arithmetic: a block does 2 * 128 * 128 * 32 flops per 16 KiB loaded (128 flops per
// byte of shared traffic, far above the H100's ~ 300 flops/byte ridge from L2), so the tensor
// cores bound it. mma.sync reaches ~ 60-70% of the H100's 989 TFLOP/s dense bf16 (wgmma is
// needed for more); at M = 2 * 333 rows one 1024 x 4096 layer fills only 6 x 32 = 192 tiles,
// about 1.5 waves on 132 SMs, which costs another ~ 25% (see ROOFLINE.md).
//
// Split-K. With few output tiles (N = 1024 at M = 666 fills 48 of an H100's 264 block slots)
// the K range is cut into `splits` slices of `k_split` (gridDim.z = splits): each block
// multiplies its slice and stores the raw f32 tile into `partial [splits, M, N]` (dense rows,
// logical row m). A second kernel, gemm_splitk_*, sums the slices of each element in slice
// order and applies the epilogue: deterministic, the same result on every run and device.
#ifndef MUDDIT_COMMON_CUH
#include "common.cuh"
#endif

#define GEMM_BM 128
#define GEMM_BN 128
#define GEMM_BK 32
#define GEMM_STAGES 3
#define GEMM_LDS 40
#define GEMM_THREADS 256
#define GEMM_STAGE_ELEMS ((GEMM_BM + GEMM_BN) * GEMM_LDS)

// Convolution geometry (conv2d_bf16 only): input image `[B, h, w, c]`, square kernel `ksize`,
// `stride`, zero padding `pad_t` rows above and `pad_l` columns left (bottom and right padding
// follow from the output size `[B, ho, wo, N]`).
struct ConvGeom {
    i32 h;
    i32 w;
    i32 c;
    i32 ho;
    i32 wo;
    i32 ksize;
    i32 stride;
    i32 pad_t;
    i32 pad_l;
    i32 pad_;
};

struct GemmParams {
    u64 a;     // bf16 [M, lda] rows through a_map; conv: the image [B, h, w, c]
    u64 w;     // bf16 [N, K]
    u64 bias;  // f32 [N] or 0
    u64 c;     // output [M, ldc] rows through c_map: bf16, or f32 for f32out and residual
    u64 gate;  // residual: f32 gate[(m / rows_per_item) * gate_stride + n], or 0 for gate 1
    u64 res;   // gemm_bf16 and conv: bf16 residual, same indexing as C, or 0
    u64 partial;  // split-K: f32 [splits, M, N] partial sums, or 0
    i32 m;
    i32 n;
    i32 k;
    i32 lda;
    i32 ldc;
    i32 act;  // MUDDIT_ACT_*
    i32 rows_per_item;
    i32 gate_stride;
    i32 splits;   // K slices (gridDim.z); 1: the tile applies the epilogue itself
    i32 k_split;  // K elements per slice, a multiple of GEMM_BK
    RowMap a_map;
    RowMap c_map;
    ConvGeom conv;
};

#define GEMM_OUT_BF16 0
#define GEMM_OUT_F32 1
#define GEMM_OUT_RESIDUAL 2

// The 8 consecutive A elements of row m starting at column k (a 16-byte chunk), or invalid.
template <bool CONV>
__device__ __forceinline__ const bf16* a_chunk(const GemmParams& p, int m, int k, bool& valid) {
    const bf16* base = reinterpret_cast<const bf16*>(p.a);
    valid = m < p.m && k < p.k;
    if (!valid) return base;
    if (!CONV) return base + map_row(p.a_map, m) * p.lda + k;
    const ConvGeom& g = p.conv;
    const int ox = m % g.wo, t = m / g.wo, oy = t % g.ho, b = t / g.ho;
    const int ch = k % g.c, tap = k / g.c, kx = tap % g.ksize, ky = tap / g.ksize;
    const int iy = oy * g.stride + ky - g.pad_t, ix = ox * g.stride + kx - g.pad_l;
    valid = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
    if (!valid) return base;
    return base + (((i64)b * g.h + iy) * g.w + ix) * g.c + ch;
}

template <bool CONV>
__device__ __forceinline__ void gemm_load_stage(const GemmParams& p, bf16* stage, int m0, int n0,
                                                int kt) {
    bf16* sa = stage;
    bf16* sb = stage + GEMM_BM * GEMM_LDS;
    const bf16* w = reinterpret_cast<const bf16*>(p.w);
    for (int i = threadIdx.x; i < GEMM_BM * (GEMM_BK / 8); i += GEMM_THREADS) {
        const int r = i / (GEMM_BK / 8), kc = (i % (GEMM_BK / 8)) * 8;
        bool valid;
        const bf16* src = a_chunk<CONV>(p, m0 + r, kt * GEMM_BK + kc, valid);
        cp_async_16(sa + r * GEMM_LDS + kc, src, valid);
    }
    for (int i = threadIdx.x; i < GEMM_BN * (GEMM_BK / 8); i += GEMM_THREADS) {
        const int r = i / (GEMM_BK / 8), kc = (i % (GEMM_BK / 8)) * 8;
        const int n = n0 + r, k = kt * GEMM_BK + kc;
        const bool valid = n < p.n && k < p.k;
        cp_async_16(sb + r * GEMM_LDS + kc, valid ? w + (i64)n * p.k + k : w, valid);
    }
}

// Output element (m, n) from its accumulated product `v`: bias, then the epilogue of OUT.
template <int OUT>
__device__ __forceinline__ void gemm_store(const GemmParams& p, int m, int n, float v) {
    const float* bias = reinterpret_cast<const float*>(p.bias);
    const float* gate = reinterpret_cast<const float*>(p.gate);
    const i64 at = map_row(p.c_map, m) * p.ldc + n;
    if (bias) v += bias[n];
    if (OUT == GEMM_OUT_RESIDUAL) {
        const float gv = gate ? gate[(i64)(m / p.rows_per_item) * p.gate_stride + n] : 1.0f;
        reinterpret_cast<float*>(p.c)[at] += gv * v;
        return;
    }
    v = activate(p.act, v);
    if (OUT == GEMM_OUT_F32) {
        reinterpret_cast<float*>(p.c)[at] = v;
    } else {
        if (p.res) v += load_bf16(p.res, at);
        store_bf16(p.c, at, v);
    }
}

template <bool CONV, int OUT>
__device__ __forceinline__ void gemm_tile(const GemmParams& p) {
    MUDDIT_DYNAMIC_SHARED(bf16, smem);
    const int lane = threadIdx.x % MUDDIT_WARP, warp = threadIdx.x / MUDDIT_WARP;
    const int wm = warp / 4, wn = warp % 4;
    const int m0 = blockIdx.y * GEMM_BM, n0 = blockIdx.x * GEMM_BN;
    // This block's K slices [kt0, kt0 + kts): all of K, or split z's part.
    const int per = p.k_split / GEMM_BK, kt0 = blockIdx.z * per;
    const int rest = (p.k + GEMM_BK - 1) / GEMM_BK - kt0;
    const int kts = rest < per ? rest : per;

    float acc[4][4][4];
    MUDDIT_UNROLL
    for (int i = 0; i < 4; i++)
        MUDDIT_UNROLL
        for (int j = 0; j < 4; j++)
            MUDDIT_UNROLL
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    for (int s = 0; s < GEMM_STAGES - 1; s++) {
        if (s < kts) gemm_load_stage<CONV>(p, smem + s * GEMM_STAGE_ELEMS, m0, n0, kt0 + s);
        cp_async_commit();
    }
    for (int kt = 0; kt < kts; kt++) {
        cp_async_wait<GEMM_STAGES - 2>();
        __syncthreads();
        const int next = kt + GEMM_STAGES - 1;
        if (next < kts)
            gemm_load_stage<CONV>(p, smem + (next % GEMM_STAGES) * GEMM_STAGE_ELEMS, m0, n0,
                                  kt0 + next);
        cp_async_commit();

        const bf16* sa = smem + (kt % GEMM_STAGES) * GEMM_STAGE_ELEMS;
        const bf16* sb = sa + GEMM_BM * GEMM_LDS;
        MUDDIT_UNROLL
        for (int kk = 0; kk < GEMM_BK; kk += 16) {
            u32 af[4][4], bfr[4][2];
            MUDDIT_UNROLL
            for (int mi = 0; mi < 4; mi++) {
                const int row = wm * 64 + mi * 16 + lane % 16;
                ldmatrix_x4(af[mi], sa + row * GEMM_LDS + kk + (lane / 16) * 8);
            }
            MUDDIT_UNROLL
            for (int nj = 0; nj < 4; nj += 2) {
                const int row = wn * 32 + nj * 8 + (lane / 16) * 8 + lane % 8;
                u32 r[4];
                ldmatrix_x4(r, sb + row * GEMM_LDS + kk + ((lane / 8) % 2) * 8);
                bfr[nj][0] = r[0];
                bfr[nj][1] = r[1];
                bfr[nj + 1][0] = r[2];
                bfr[nj + 1][1] = r[3];
            }
            MUDDIT_UNROLL
            for (int mi = 0; mi < 4; mi++)
                MUDDIT_UNROLL
                for (int nj = 0; nj < 4; nj++) mma_bf16_16816(acc[mi][nj], af[mi], bfr[nj]);
        }
    }
    cp_async_wait<0>();

    const int g = lane / 4, t = lane % 4;
    float* partial = reinterpret_cast<float*>(p.partial) + (i64)blockIdx.z * p.m * p.n;
    MUDDIT_UNROLL
    for (int mi = 0; mi < 4; mi++) {
        MUDDIT_UNROLL
        for (int half = 0; half < 2; half++) {
            const int m = m0 + wm * 64 + mi * 16 + g + half * 8;
            if (m >= p.m) continue;
            MUDDIT_UNROLL
            for (int nj = 0; nj < 4; nj++) {
                MUDDIT_UNROLL
                for (int e = 0; e < 2; e++) {
                    const int n = n0 + wn * 32 + nj * 8 + 2 * t + e;
                    if (n >= p.n) continue;
                    const float v = acc[mi][nj][half * 2 + e];
                    if (p.splits > 1)
                        partial[(i64)m * p.n + n] = v;
                    else
                        gemm_store<OUT>(p, m, n, v);
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS) gemm_bf16(GemmParams p) {
    gemm_tile<false, GEMM_OUT_BF16>(p);
}
MUDDIT_EXPORT(gemm_bf16, GemmParams)

extern "C" __global__ void __launch_bounds__(GEMM_THREADS) gemm_f32out_bf16(GemmParams p) {
    gemm_tile<false, GEMM_OUT_F32>(p);
}
MUDDIT_EXPORT(gemm_f32out_bf16, GemmParams)

extern "C" __global__ void __launch_bounds__(GEMM_THREADS) gemm_residual_bf16(GemmParams p) {
    gemm_tile<false, GEMM_OUT_RESIDUAL>(p);
}
MUDDIT_EXPORT(gemm_residual_bf16, GemmParams)

// Convolution as an implicit GEMM: M = B * ho * wo output pixels, N = output channels,
// K = ksize^2 * c with W `[N, (ky, kx, c)]` (patch-major, as kernels::cpu::conv). Needs
// c % 8 == 0 (a 16-byte chunk never straddles two taps): pad an RGB input to 8 channels.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS) conv2d_bf16(GemmParams p) {
    gemm_tile<true, GEMM_OUT_BF16>(p);
}
MUDDIT_EXPORT(conv2d_bf16, GemmParams)

// Split-K, second pass: element i = m * N + n of C from the sum of its `splits` partials,
// taken in slice order, then the epilogue. One thread per element, grid-stride.
template <int OUT>
__device__ __forceinline__ void gemm_splitk(const GemmParams& p) {
    const float* partial = reinterpret_cast<const float*>(p.partial);
    const i64 count = (i64)p.m * p.n;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < count;
         i += (i64)gridDim.x * blockDim.x) {
        float v = 0.0f;
        for (int z = 0; z < p.splits; z++) v += partial[z * count + i];
        gemm_store<OUT>(p, (int)(i / p.n), (int)(i % p.n), v);
    }
}

extern "C" __global__ void __launch_bounds__(256) gemm_splitk_bf16(GemmParams p) {
    gemm_splitk<GEMM_OUT_BF16>(p);
}
MUDDIT_EXPORT(gemm_splitk_bf16, GemmParams)

extern "C" __global__ void __launch_bounds__(256) gemm_splitk_f32out(GemmParams p) {
    gemm_splitk<GEMM_OUT_F32>(p);
}
MUDDIT_EXPORT(gemm_splitk_f32out, GemmParams)

extern "C" __global__ void __launch_bounds__(256) gemm_splitk_residual(GemmParams p) {
    gemm_splitk<GEMM_OUT_RESIDUAL>(p);
}
MUDDIT_EXPORT(gemm_splitk_residual, GemmParams)
