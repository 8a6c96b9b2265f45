// sampler.cu: one masked discrete-diffusion step on the device, choosing the same tokens as
// muddit_sampler::Sampler::step_with_uniforms given the same uniforms.
//
// Two kernels per step:
//   sample_tokens_f32  one warp per token: guidance, softmax, the draw and the confidence;
//   remask_f32         one block per row: k, the k-th smallest confidence, the new ids.
//
// Bit-for-bit rules (sampler/src/token.rs): every float operation below is the CPU's, in the
// CPU's order, with no fused multiply-add (__fmul_rn / __fadd_rn are never contracted):
// - guidance `u + g * (c - u)`, recomputed on each pass instead of stored;
// - the max skips NaN (`x > a`), the exp is the same Cody-Waite + degree-5 polynomial, the f32
//   exp-sum runs in 16 lanes over full chunks of 16 (lane l: elements 16 i + l, in order), the
//   tail separately, then lanes pairwise (l + 8, l + 4, l + 2, l + 1) and `+ tail`: lanes 0..15
//   of the warp are the CPU's 16 lanes and shuffles do the pairwise step;
// - the draw's per-block f64 sums (blocks of 64, 16 lanes each) likewise, their running total
//   and the walk sequential on lane 0;
// - `1 / sum`, `e * inv` in f32, the comparisons as written.
// The logarithms (`ln p`, the Gumbel noise) use the device's logf, within 1 ulp of the host's:
// a confidence can differ by an ulp, which changes a choice only if two confidences straddle the
// cutoff within that ulp. Under the CPU emulator (g++, glibc logf) the results are bit-identical.
//
// Limits. Bandwidth: the logits are read three times (max, sum, block sums) from L2/L1; a
// 1024 px guided step reads 2 x 4096 x 8192 f32 (268 MB) once from HBM: ~ 80 us at 3.35 TB/s,
// the exp polynomial is ~ 20 instructions per logit and adds about as much.
#ifndef MUDDIT_COMMON_CUH
#include "common.cuh"
#endif

#define SAMPLER_WARPS 4
#define SAMPLER_LANES 16
#define SAMPLER_BLOCK 64

struct SampleParams {
    u64 logits;    // f32 [G * B, n, V], unconditional rows first when guided (G = 2)
    u64 ids;       // u32 [B, n], read
    u64 draw_u;    // f32 [B, n]
    u64 gumbel_u;  // f32 [B, n]
    u64 drawn;     // u32 [B, n], written
    u64 conf;      // f32 [B, n], written
    u64 bad;       // i32 [1]: atomicMin of the first token with bad logits (host sets INT_MAX)
    i32 batch;
    i32 tokens;
    i32 vocab;
    u32 mask_id;
    i32 guided;
    float scale;
    i32 greedy;
    float temperature;
};

__device__ __forceinline__ float sampler_logit(const SampleParams& p, const float* uncond,
                                               const float* cond, int j) {
    if (!p.guided) return cond[j];
    const float u = uncond[j];
    return __fadd_rn(u, __fmul_rn(p.scale, __fsub_rn(cond[j], u)));
}

// exp(x) for x <= 0, as token::exp_nonpositive.
__device__ __forceinline__ float exp_nonpositive(float x) {
    const float LN2_HI = 0.693359375f, LN2_LO = -2.12194440e-4f, SHIFTER = 12582912.0f;
    const float LOG2E = 1.44269504088896341f;
    const float xc = x < -87.0f ? -87.0f : x;
    const float t = __fadd_rn(__fmul_rn(xc, LOG2E), SHIFTER);
    const float n = __fsub_rn(t, SHIFTER);
    const float r = __fsub_rn(__fsub_rn(xc, __fmul_rn(n, LN2_HI)), __fmul_rn(n, LN2_LO));
    float poly = __fadd_rn(__fmul_rn(1.9875691500e-4f, r), 1.3981999507e-3f);
    poly = __fadd_rn(__fmul_rn(poly, r), 8.3334519073e-3f);
    poly = __fadd_rn(__fmul_rn(poly, r), 4.1665795894e-2f);
    poly = __fadd_rn(__fmul_rn(poly, r), 1.6666665459e-1f);
    poly = __fadd_rn(__fmul_rn(poly, r), 0.5f);
    const float er = __fadd_rn(__fadd_rn(__fmul_rn(poly, __fmul_rn(r, r)), r), 1.0f);
    const int n_int = (int)(f32_as_u32(t) - f32_as_u32(SHIFTER));
    const float scale = u32_as_f32((u32)(n_int + 127) << 23);
    return x < -87.0f ? 0.0f : __fmul_rn(er, scale);
}

__device__ __forceinline__ float log_prob(float p) { return logf(p > 1e-20f ? p : 1e-20f); }

__device__ __forceinline__ float gumbel_noise(float u) {
    const float a = -logf(u > 1e-20f ? u : 1e-20f);
    return -logf(a > 1e-20f ? a : 1e-20f);
}

// Pairwise reduction of lanes 0..15 as token::reduce_lanes; the result is valid on lane 0.
template <typename T>
__device__ __forceinline__ T reduce16(T v) {
    for (int w = 8; w > 0; w >>= 1) v = v + __shfl_down_sync(0xFFFFFFFFu, v, w);
    return v;
}

// The last index j with e_j * inv > 0 in [begin, end), or `fallback` when none (warp-wide).
__device__ __forceinline__ int last_positive(const SampleParams& p, const float* un,
                                             const float* co, float m, float inv, int begin,
                                             int end, int fallback) {
    const int lane = threadIdx.x % MUDDIT_WARP;
    int best = -1;
    for (int j = begin + lane; j < end; j += MUDDIT_WARP)
        if (__fmul_rn(exp_nonpositive(__fsub_rn(sampler_logit(p, un, co, j), m)), inv) > 0.0f)
            best = j;
    for (int o = 16; o > 0; o >>= 1) best = imax(best, __shfl_xor_sync(0xFFFFFFFFu, best, o));
    return best < 0 ? fallback : best;
}

extern "C" __global__ void __launch_bounds__(SAMPLER_WARPS * 32) sample_tokens_f32(SampleParams p) {
    MUDDIT_DYNAMIC_SHARED(double, blocks_all);
    const int lane = threadIdx.x % MUDDIT_WARP, warp = threadIdx.x / MUDDIT_WARP;
    const i64 flat = (i64)blockIdx.x * SAMPLER_WARPS + warp;
    if (flat >= (i64)p.batch * p.tokens) return;
    const int V = p.vocab;
    const int nblocks = (V + SAMPLER_BLOCK - 1) / SAMPLER_BLOCK;
    double* blocks = blocks_all + (i64)warp * nblocks;
    const int row = (int)(flat / p.tokens), token = (int)(flat % p.tokens);
    const u32 id = reinterpret_cast<const u32*>(p.ids)[flat];
    const float noise =
        p.greedy ? 0.0f
                 : __fmul_rn(p.temperature, gumbel_noise(reinterpret_cast<const float*>(p.gumbel_u)[flat]));
    u32* drawn = reinterpret_cast<u32*>(p.drawn);
    float* conf = reinterpret_cast<float*>(p.conf);
    if (id != p.mask_id) {
        if (lane == 0) {
            drawn[flat] = id;
            conf[flat] = __fadd_rn(log_prob(3.40282347e38f), noise);
        }
        return;
    }
    const float* logits = reinterpret_cast<const float*>(p.logits);
    const float* cond = logits + ((i64)(p.guided ? p.batch + row : row) * p.tokens + token) * V;
    const float* uncond = logits + ((i64)row * p.tokens + token) * V;

    // Max (NaN skipped) and, for greedy draws, its first index.
    const float NEG_INF = -u32_as_f32(0x7F800000u);
    float m = NEG_INF;
    for (int j = lane; j < V; j += MUDDIT_WARP) {
        const float x = sampler_logit(p, uncond, cond, j);
        m = x > m ? x : m;
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xFFFFFFFFu, m, o);
        m = w > m ? w : m;
    }
    const bool finite_max = m > NEG_INF && m < -NEG_INF;
    int argmax = V;
    if (p.greedy && finite_max) {
        for (int j = lane; j < V; j += MUDDIT_WARP)
            if (sampler_logit(p, uncond, cond, j) == m) {
                argmax = j;
                break;
            }
        for (int o = 16; o > 0; o >>= 1) argmax = imin(argmax, __shfl_xor_sync(0xFFFFFFFFu, argmax, o));
        if (argmax == V) argmax = 0;
    }

    // Exp-sum in the CPU's 16 lanes, then the tail.
    const int full = V / SAMPLER_LANES * SAMPLER_LANES;
    float acc = 0.0f;
    if (lane < SAMPLER_LANES && finite_max)
        for (int j = lane; j < full; j += SAMPLER_LANES)
            acc = __fadd_rn(acc, exp_nonpositive(__fsub_rn(sampler_logit(p, uncond, cond, j), m)));
    acc = reduce16(acc);
    float sum = 0.0f;
    if (lane == 0 && finite_max) {
        float tail = 0.0f;
        for (int j = full; j < V; j++)
            tail = __fadd_rn(tail, exp_nonpositive(__fsub_rn(sampler_logit(p, uncond, cond, j), m)));
        sum = __fadd_rn(acc, tail);
    }
    sum = __shfl_sync(0xFFFFFFFFu, sum, 0);
    if (!finite_max || !(sum > NEG_INF && sum < -NEG_INF)) {
        if (lane == 0) atomicMin(reinterpret_cast<int*>(p.bad), (int)flat);
        return;
    }
    const float inv = 1.0f / sum;

    int choice = argmax;
    if (!p.greedy) {
        // Per-block f64 sums of e * inv, 16 lanes per block, one block per pass of the half warp.
        for (int b = 0; b < nblocks; b++) {
            double s = 0.0;
            const int end = imin(V, (b + 1) * SAMPLER_BLOCK);
            if (lane < SAMPLER_LANES)
                for (int j = b * SAMPLER_BLOCK + lane; j < end; j += SAMPLER_LANES)
                    s = __dadd_rn(s, (double)__fmul_rn(exp_nonpositive(__fsub_rn(
                                             sampler_logit(p, uncond, cond, j), m)), inv));
            s = reduce16(s);
            if (lane == 0) blocks[b] = s;
        }
        __syncwarp();
        int found = -1;  // block holding the draw (lane 0), -1 if rounding left none
        double before = 0.0, target = 0.0;
        if (lane == 0) {
            double total = 0.0;
            for (int b = 0; b < nblocks; b++) total = __dadd_rn(total, blocks[b]);
            target = (double)reinterpret_cast<const float*>(p.draw_u)[flat] * total;
            double a = 0.0;
            for (int b = 0; b < nblocks && found < 0; b++) {
                if (__dadd_rn(a, blocks[b]) > target) {
                    found = b;
                    before = a;
                } else {
                    a = __dadd_rn(a, blocks[b]);
                }
            }
            choice = -1;
            if (found >= 0) {
                double a2 = before;
                const int end = imin(V, (found + 1) * SAMPLER_BLOCK);
                for (int j = found * SAMPLER_BLOCK; j < end; j++) {
                    a2 = __dadd_rn(a2, (double)__fmul_rn(exp_nonpositive(__fsub_rn(
                                           sampler_logit(p, uncond, cond, j), m)), inv));
                    if (a2 > target) {
                        choice = j;
                        break;
                    }
                }
            }
        }
        found = __shfl_sync(0xFFFFFFFFu, found, 0);
        choice = __shfl_sync(0xFFFFFFFFu, choice, 0);
        if (choice < 0) {
            // Rounding fallbacks, as token::walk_block and token::inverse_cdf: the last positive
            // entry of the block (its first entry if none), or of the whole row (0 if none).
            const int begin = found >= 0 ? found * SAMPLER_BLOCK : 0;
            const int end = found >= 0 ? imin(V, (found + 1) * SAMPLER_BLOCK) : V;
            choice = last_positive(p, uncond, cond, m, inv, begin, end, begin);
        }
    }
    if (lane == 0) {
        const float e = exp_nonpositive(__fsub_rn(sampler_logit(p, uncond, cond, choice), m));
        const float prob = __fmul_rn(e, inv);
        drawn[flat] = (u32)choice;
        conf[flat] = __fadd_rn(log_prob(prob), noise);
    }
}
MUDDIT_EXPORT(sample_tokens_f32, SampleParams)

// ---------------------------------------------------------------------------------------------
// Re-masking: per row, k = max(1, min(unknown - 1, raw_len)) with `unknown` the row's masked
// count before the step; cutoff = the element at index k of the row's confidences sorted by
// f32::total_cmp (a 4-pass 8-bit radix select on the order-preserving key of the bits); then
// ids = conf < cutoff ? mask : drawn. At the last step (`last`) ids = drawn.
struct RemaskParams {
    u64 ids;       // u32 [B, n], read then written
    u64 drawn;     // u32 [B, n]
    u64 conf;      // f32 [B, n]
    u64 mask_len;  // i32 [B], written (k, 0 at the last step), or 0
    i32 batch;
    i32 tokens;
    u32 mask_id;
    i32 raw_len;  // floor(n * mask_ratio((step + 1) / S)), as the host computes it
    i32 last;
    i32 pad_;
};

__device__ __forceinline__ u32 total_order_key(float f) {
    const u32 u = f32_as_u32(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

extern "C" __global__ void __launch_bounds__(1024) remask_f32(RemaskParams p) {
    __shared__ int hist[256];
    __shared__ float scratch[32];
    __shared__ u32 sel[2];  // prefix, rank left
    const int row = blockIdx.x;
    u32* ids = reinterpret_cast<u32*>(p.ids) + (i64)row * p.tokens;
    const u32* drawn = reinterpret_cast<const u32*>(p.drawn) + (i64)row * p.tokens;
    const float* conf = reinterpret_cast<const float*>(p.conf) + (i64)row * p.tokens;
    if (p.last) {
        for (int i = threadIdx.x; i < p.tokens; i += blockDim.x) ids[i] = drawn[i];
        if (p.mask_len && threadIdx.x == 0) reinterpret_cast<i32*>(p.mask_len)[row] = 0;
        return;
    }
    float count = 0.0f;  // exact: at most 2^24 tokens
    for (int i = threadIdx.x; i < p.tokens; i += blockDim.x) count += ids[i] == p.mask_id ? 1.0f : 0.0f;
    const int unknown = (int)block_sum(count, scratch);
    const int k = imax(1, imin(unknown - 1, p.raw_len));

    if (threadIdx.x == 0) {
        sel[0] = 0;
        sel[1] = (u32)k;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        const u32 prefix = sel[0];
        const u32 high = shift == 24 ? 0u : (0xFFFFFFFFu << (shift + 8));
        for (int i = threadIdx.x; i < p.tokens; i += blockDim.x) {
            const u32 key = total_order_key(conf[i]);
            if ((key & high) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u32 rank = sel[1];
            int bucket = 0;
            while ((u32)hist[bucket] <= rank) {
                rank -= (u32)hist[bucket];
                bucket++;
            }
            sel[0] = prefix | ((u32)bucket << shift);
            sel[1] = rank;
        }
        __syncthreads();
    }
    const u32 key = sel[0];
    const float cutoff = u32_as_f32((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
    for (int i = threadIdx.x; i < p.tokens; i += blockDim.x)
        ids[i] = conf[i] < cutoff ? p.mask_id : drawn[i];
    if (p.mask_len && threadIdx.x == 0) reinterpret_cast<i32*>(p.mask_len)[row] = k;
}
MUDDIT_EXPORT(remask_f32, RemaskParams)
