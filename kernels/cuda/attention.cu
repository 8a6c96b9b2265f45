// attention.cu: softmax(q kᵀ / sqrt(Dh)) v, flash style: online softmax, no S x S matrix.
//
// q, k, v, o: bf16, element (b, s, h, d) at `(b * S + s) * stride + h * Dh + d`, each tensor
// with its own row stride (so q, k and v may be slices of one fused QKV buffer). Non-causal for
// the MM-DiT's joint [text; image] sequence, causal for the CLIP text encoder. Accumulation f32.
//
// Design. Grid (ceil(S / 64), H, B), 128 threads: each block owns 64 query rows of one head,
// each warp 16 of them. The block's Q tile goes to registers once (A fragments via ldmatrix).
// Keys and values stream through shared memory in tiles of 64 rows, double-buffered with
// cp.async (tile j + 1 loads while tile j is used). Per tile and warp: S = Q Kᵀ (16 x 64) with
// mma.sync m16n8k16 (K's rows are B's columns: ldmatrix without transpose), the running max
// and sum of each row updated in registers (base-2 exponentials with the scale folded in), the
// probabilities rounded to bf16 and reused in place as A fragments (the C layout of two
// adjacent n8 tiles is the A layout of one k16 step), then O += P V with V's fragments from
// ldmatrix.trans. Rows of 64 + 8 (or 128 + 8) bf16 put the 8 rows of an ldmatrix phase on
// distinct banks. Keys past S, and past the query in causal mode, get -inf; a causal block
// stops at its last query's tile.
// Dynamic shared memory: Q 64 x (Dh + 8) + 2 stages x (K + V) 64 x (Dh + 8), bf16:
// 46 KiB for Dh = 64, 85 KiB for Dh = 128.
//
// Limits. Arithmetic: 4 S Dh flops per query and key against K and V read once per 64 queries.
// The joint 1024 px sequence (77 + 1024 tokens, 8 heads of 128, batch 2) is 39 GFLOP of
// matmul; mma.sync with the softmax in between reaches ~ 40-50% of the H100's dense bf16 peak
// (FlashAttention-2 class); see ROOFLINE.md.
#ifndef MUDDIT_COMMON_CUH
#include "common.cuh"
#endif

#define ATTN_BQ 64
#define ATTN_BK 64
#define ATTN_THREADS 128

struct AttnParams {
    u64 q;
    u64 k;
    u64 v;
    u64 o;
    i32 batch;
    i32 seq;
    i32 heads;
    i32 q_stride;
    i32 k_stride;
    i32 v_stride;
    i32 o_stride;
    i32 causal;
    float scale_log2;  // log2(e) / sqrt(Dh)
    i32 pad_;
};

// Loads rows [row0, row0 + 64) of one head of `src` into `dst` (row stride DH + 8), zero rows
// at and past `seq`.
template <int DH>
__device__ __forceinline__ void attn_load_tile(bf16* dst, u64 src, int stride, int b, int h,
                                               int row0, int seq) {
    const bf16* base = reinterpret_cast<const bf16*>(src);
    constexpr int CHUNKS = DH / 8;
    for (int i = threadIdx.x; i < 64 * CHUNKS; i += ATTN_THREADS) {
        const int r = i / CHUNKS, c = (i % CHUNKS) * 8;
        const int s = row0 + r;
        const bool valid = s < seq;
        const bf16* g = valid ? base + ((i64)b * seq + s) * stride + h * DH + c : base;
        cp_async_16(dst + r * (DH + 8) + c, g, valid);
    }
}

template <int DH>
__device__ __forceinline__ void flash_attention(const AttnParams& p) {
    constexpr int LDS = DH + 8;
    constexpr int KSTEPS = DH / 16;  // k16 steps of Q Kᵀ
    constexpr int DTILES = DH / 8;   // n8 tiles of O
    constexpr int TILE = 64 * LDS;
    MUDDIT_DYNAMIC_SHARED(bf16, smem);
    bf16* sq = smem;
    bf16* skv = smem + TILE;  // stage s: K at skv + 2 s TILE, V after it

    const int lane = threadIdx.x % MUDDIT_WARP, warp = threadIdx.x / MUDDIT_WARP;
    const int g = lane / 4, t = lane % 4;
    const int q0 = blockIdx.x * ATTN_BQ, h = blockIdx.y, b = blockIdx.z;
    const int last_query = imin(q0 + ATTN_BQ, p.seq) - 1;
    const int key_end = p.causal ? last_query + 1 : p.seq;
    const int tiles = (key_end + ATTN_BK - 1) / ATTN_BK;

    attn_load_tile<DH>(sq, p.q, p.q_stride, b, h, q0, p.seq);
    cp_async_commit();
    attn_load_tile<DH>(skv, p.k, p.k_stride, b, h, 0, p.seq);
    attn_load_tile<DH>(skv + TILE, p.v, p.v_stride, b, h, 0, p.seq);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    u32 qf[KSTEPS][4];
    MUDDIT_UNROLL
    for (int ks = 0; ks < KSTEPS; ks++)
        ldmatrix_x4(qf[ks], sq + (warp * 16 + lane % 16) * LDS + ks * 16 + (lane / 16) * 8);

    float o[DTILES][4];
    MUDDIT_UNROLL
    for (int i = 0; i < DTILES; i++)
        MUDDIT_UNROLL
        for (int e = 0; e < 4; e++) o[i][e] = 0.0f;
    const float NEG_INF = -__int_as_float(0x7F800000);
    float m[2] = {NEG_INF, NEG_INF};  // running max of rows g and g + 8 (scaled, base 2)
    float l[2] = {0.0f, 0.0f};        // this thread's part of the running sums
    const int qrow[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};

    for (int j = 0; j < tiles; j++) {
        const bf16* sk = skv + (j % 2) * 2 * TILE;
        const bf16* sv = sk + TILE;
        if (j + 1 < tiles) {
            bf16* nk = skv + ((j + 1) % 2) * 2 * TILE;
            attn_load_tile<DH>(nk, p.k, p.k_stride, b, h, (j + 1) * ATTN_BK, p.seq);
            attn_load_tile<DH>(nk + TILE, p.v, p.v_stride, b, h, (j + 1) * ATTN_BK, p.seq);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        // S = Q Kᵀ for 16 rows x 64 keys.
        float s[8][4];
        MUDDIT_UNROLL
        for (int i = 0; i < 8; i++)
            MUDDIT_UNROLL
            for (int e = 0; e < 4; e++) s[i][e] = 0.0f;
        MUDDIT_UNROLL
        for (int ks = 0; ks < KSTEPS; ks++) {
            MUDDIT_UNROLL
            for (int nt = 0; nt < 8; nt += 2) {
                u32 r[4];
                const int row = nt * 8 + (lane / 16) * 8 + lane % 8;
                ldmatrix_x4(r, sk + row * LDS + ks * 16 + ((lane / 8) % 2) * 8);
                const u32 b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                mma_bf16_16816(s[nt], qf[ks], b0);
                mma_bf16_16816(s[nt + 1], qf[ks], b1);
            }
        }

        // Online softmax.
        const int k0 = j * ATTN_BK;
        float mx[2] = {NEG_INF, NEG_INF};
        MUDDIT_UNROLL
        for (int nt = 0; nt < 8; nt++) {
            MUDDIT_UNROLL
            for (int e = 0; e < 4; e++) {
                const int key = k0 + nt * 8 + 2 * t + (e & 1), r = e >> 1;
                float v = s[nt][e] * p.scale_log2;
                if (key >= p.seq || (p.causal && key > qrow[r])) v = NEG_INF;
                s[nt][e] = v;
                mx[r] = v > mx[r] ? v : mx[r];
            }
        }
        float alpha[2], base[2];
        MUDDIT_UNROLL
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xFFFFFFFFu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xFFFFFFFFu, mx[r], 2));
            const float mn = fmaxf(m[r], mx[r]);
            base[r] = mn == NEG_INF ? 0.0f : mn;  // a row with nothing visible yet
            alpha[r] = exp2f(m[r] - base[r]);
            m[r] = mn;
            l[r] *= alpha[r];
        }
        MUDDIT_UNROLL
        for (int dt = 0; dt < DTILES; dt++) {
            o[dt][0] *= alpha[0];
            o[dt][1] *= alpha[0];
            o[dt][2] *= alpha[1];
            o[dt][3] *= alpha[1];
        }
        u32 pf[4][4];  // P as A fragments, one per k16 step over the 64 keys
        MUDDIT_UNROLL
        for (int nt = 0; nt < 8; nt++) {
            float pr[4];
            MUDDIT_UNROLL
            for (int e = 0; e < 4; e++) {
                pr[e] = exp2f(s[nt][e] - base[e >> 1]);
                l[e >> 1] += pr[e];
            }
            pf[nt / 2][(nt % 2) * 2 + 0] = pack_bf16x2(pr[0], pr[1]);
            pf[nt / 2][(nt % 2) * 2 + 1] = pack_bf16x2(pr[2], pr[3]);
        }

        // O += P V.
        MUDDIT_UNROLL
        for (int ks = 0; ks < 4; ks++) {
            MUDDIT_UNROLL
            for (int dt = 0; dt < DTILES; dt += 2) {
                u32 r[4];
                const int row = ks * 16 + ((lane / 8) % 2) * 8 + lane % 8;
                ldmatrix_x4_trans(r, sv + row * LDS + dt * 8 + (lane / 16) * 8);
                const u32 b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                mma_bf16_16816(o[dt], pf[ks], b0);
                mma_bf16_16816(o[dt + 1], pf[ks], b1);
            }
        }
        __syncthreads();
    }

    float inv[2];
    MUDDIT_UNROLL
    for (int r = 0; r < 2; r++) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 1);
        sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 2);
        inv[r] = 1.0f / sum;
    }
    bf16* out = reinterpret_cast<bf16*>(p.o);
    MUDDIT_UNROLL
    for (int r = 0; r < 2; r++) {
        if (qrow[r] >= p.seq) continue;
        bf16* row = out + ((i64)b * p.seq + qrow[r]) * p.o_stride + h * DH;
        MUDDIT_UNROLL
        for (int dt = 0; dt < DTILES; dt++) {
            *reinterpret_cast<u32*>(row + dt * 8 + 2 * t) =
                pack_bf16x2(o[dt][2 * r] * inv[r], o[dt][2 * r + 1] * inv[r]);
        }
    }
}

extern "C" __global__ void __launch_bounds__(ATTN_THREADS) flash_attn_d64_bf16(AttnParams p) {
    flash_attention<64>(p);
}
MUDDIT_EXPORT(flash_attn_d64_bf16, AttnParams)

extern "C" __global__ void __launch_bounds__(ATTN_THREADS) flash_attn_d128_bf16(AttnParams p) {
    flash_attention<128>(p);
}
MUDDIT_EXPORT(flash_attn_d128_bf16, AttnParams)
