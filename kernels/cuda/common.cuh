// common.cuh: what every muddit kernel shares.
//
// - Integer types and the `bf16` storage type with its conversions (no CUDA headers: NVRTC
//   compiles these sources with no include path at all).
// - Warp and block reductions.
// - The tensor-core and async-copy instructions, each behind a small function. On the device
//   they are one inline PTX instruction; under `MUDDIT_EMU` (the g++ build of the same sources,
//   see kernels/emu/cuda_emu.h) they call the emulator, which reproduces the PTX ISA fragment
//   layouts lane by lane, so the real GEMM and attention kernels run and are tested on a CPU.
// - `MUDDIT_EXPORT(name, Params)`: every kernel takes one parameter struct by value; under the
//   emulator this macro also emits the C entry point `muddit_emu_<name>` the Rust tests call.
//
// Layout conventions: tensors are row-major with the channel last; "rows" are tokens or pixels.
// Pointers inside parameter structs are 64-bit addresses (`u64`) so the Rust side can mirror
// each struct with `#[repr(C)]` and plain integers.
#ifndef MUDDIT_COMMON_CUH
#define MUDDIT_COMMON_CUH

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef long long i64;

#define MUDDIT_WARP 32

// Full unrolling of a loop with a constant trip count (register-resident arrays need it).
#ifdef MUDDIT_EMU
#define MUDDIT_UNROLL
#else
#define MUDDIT_UNROLL _Pragma("unroll")
#endif

// ---------------------------------------------------------------------------------------------
// Dynamic shared memory. `MUDDIT_DYNAMIC_SHARED(T, name)` declares `T* name` pointing at the
// block's dynamic shared memory (16-byte aligned on the device, 128 under the emulator).
#ifdef MUDDIT_EMU
#define MUDDIT_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu::dynamic_shared())
#define MUDDIT_EXPORT(name, Params)                                                         \
    extern "C" void muddit_emu_##name(emu::LaunchDims dims, const void* params) {           \
        emu::launch(dims, [](const void* p) { name(*static_cast<const Params*>(p)); },     \
                    params);                                                                \
    }                                                                                       \
    extern "C" unsigned long long muddit_emu_sizeof_##name() { return sizeof(Params); }
#else
#define MUDDIT_DYNAMIC_SHARED(T, name)                                                      \
    extern __shared__ __align__(16) unsigned char muddit_dynamic_smem[];                    \
    T* name = reinterpret_cast<T*>(muddit_dynamic_smem)
#define MUDDIT_EXPORT(name, Params)
#endif

// ---------------------------------------------------------------------------------------------
// Bit casts.
#ifdef MUDDIT_EMU
__device__ __forceinline__ float u32_as_f32(u32 v) { float f; memcpy(&f, &v, 4); return f; }
__device__ __forceinline__ u32 f32_as_u32(float f) { u32 v; memcpy(&v, &f, 4); return v; }
#else
__device__ __forceinline__ float u32_as_f32(u32 v) { return __uint_as_float(v); }
__device__ __forceinline__ u32 f32_as_u32(float f) { return __float_as_uint(f); }
#endif

// ---------------------------------------------------------------------------------------------
// bf16 storage: the upper half of an f32. Arithmetic is always in f32.
struct bf16 {
    u16 bits;
};

__device__ __forceinline__ float bf16_to_f32(bf16 h) { return u32_as_f32((u32)h.bits << 16); }

// Round to nearest even; NaN becomes the canonical 0x7FFF, as `cvt.rn.bf16.f32` does.
__device__ __forceinline__ bf16 f32_to_bf16(float f) {
    bf16 h;
#ifdef MUDDIT_EMU
    u32 u = f32_as_u32(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
        h.bits = 0x7FFF;
    } else {
        u += 0x7FFFu + ((u >> 16) & 1u);
        h.bits = (u16)(u >> 16);
    }
#else
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
#endif
    return h;
}

// Two f32 into one 32-bit register of two bf16: `lo` in bits 0..15, `hi` in bits 16..31.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
#ifdef MUDDIT_EMU
    return (u32)f32_to_bf16(lo).bits | ((u32)f32_to_bf16(hi).bits << 16);
#else
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

__device__ __forceinline__ float bf16x2_lo(u32 v) { return u32_as_f32(v << 16); }
__device__ __forceinline__ float bf16x2_hi(u32 v) { return u32_as_f32(v & 0xFFFF0000u); }

__device__ __forceinline__ float load_bf16(u64 base, i64 index) {
    return bf16_to_f32(reinterpret_cast<const bf16*>(base)[index]);
}
__device__ __forceinline__ void store_bf16(u64 base, i64 index, float v) {
    reinterpret_cast<bf16*>(base)[index] = f32_to_bf16(v);
}

// An element of an f32 (`is_f32`) or bf16 tensor at `base`, read or written as f32.
__device__ __forceinline__ float load_elem(u64 base, i64 index, bool is_f32) {
    return is_f32 ? reinterpret_cast<const float*>(base)[index] : load_bf16(base, index);
}
__device__ __forceinline__ void store_elem(u64 base, i64 index, float v, bool is_f32) {
    if (is_f32)
        reinterpret_cast<float*>(base)[index] = v;
    else
        store_bf16(base, index, v);
}

// Grid-stride loops: `for (i64 i = grid_thread(); i < n; i += grid_threads())`.
__device__ __forceinline__ i64 grid_thread() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ i64 grid_threads() { return (i64)gridDim.x * blockDim.x; }

// One warp per task (a row, a head): this warp's task over the grid, and this thread's lane.
__device__ __forceinline__ i64 warp_task() {
    return (i64)blockIdx.x * (blockDim.x / MUDDIT_WARP) + threadIdx.x / MUDDIT_WARP;
}
__device__ __forceinline__ int lane_id() { return threadIdx.x % MUDDIT_WARP; }

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// ---------------------------------------------------------------------------------------------
// Warp and block reductions (butterfly: every lane ends with the result).
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xFFFFFFFFu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

// Sum over the block; every thread gets the result. `scratch`: 32 floats of shared memory.
// All threads of the block must call it (it holds two barriers).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % MUDDIT_WARP, warp = threadIdx.x / MUDDIT_WARP;
    const int warps = (blockDim.x + MUDDIT_WARP - 1) / MUDDIT_WARP;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : 0.0f;
    t = warp_sum(t);
    __syncthreads();
    return t;
}

// ---------------------------------------------------------------------------------------------
// Tensor cores: mma.sync m16n8k16, bf16 inputs, f32 accumulators.
//
// Fragment ownership (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with g = lane / 4 and
// t = lane % 4:
//   A 16x16 (row-major): a[0] = A[g][2t..2t+1],   a[1] = A[g+8][2t..2t+1],
//                        a[2] = A[g][2t+8..+9],   a[3] = A[g+8][2t+8..+9]
//   B 16x8 (k x n, "col"): b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]
//   C 16x8 f32:          c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1]
// Each 32-bit register holds two bf16, the lower-indexed element in the low half.
__device__ __forceinline__ void mma_bf16_16816(float c[4], const u32 a[4], const u32 b[2]) {
#ifdef MUDDIT_EMU
    emu::mma_bf16_16816(c, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// ldmatrix .x4: lanes 8j..8j+7 give the row addresses (16 bytes each, shared memory) of 8x8
// bf16 matrix j; register r[j] of lane l receives row l/4, columns 2(l%4)..2(l%4)+1 of matrix
// j. With `_trans`, r[j] receives rows 2(l%4), 2(l%4)+1 of column l/4 (the transpose).
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4_load(u32 r[4], const void* smem_row) {
#ifdef MUDDIT_EMU
    emu::ldmatrix_x4(r, smem_row, TRANS);
#else
    u32 a = (u32)__cvta_generic_to_shared(smem_row);
    if constexpr (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
#endif
}
__device__ __forceinline__ void ldmatrix_x4(u32 r[4], const void* smem_row) {
    ldmatrix_x4_load<false>(r, smem_row);
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 r[4], const void* smem_row) {
    ldmatrix_x4_load<true>(r, smem_row);
}

// ---------------------------------------------------------------------------------------------
// Asynchronous global -> shared copies (sm_80 cp.async). 16 bytes; with `valid` false the
// destination is zero-filled and the source is not read. Copies are visible only after
// `cp_async_wait<N>()` (at most N groups still in flight) and a barrier. The emulator performs
// each copy as late as the program allows, at the wait, so a missing wait shows up as stale data.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
#ifdef MUDDIT_EMU
    emu::cp_async_16(smem, gmem, valid);
#else
    u32 s = (u32)__cvta_generic_to_shared(smem);
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef MUDDIT_EMU
    emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef MUDDIT_EMU
    emu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ---------------------------------------------------------------------------------------------
// Activations, f32 in and out.
__device__ __forceinline__ float silu_f32(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float gelu_tanh_f32(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}
__device__ __forceinline__ float gelu_erf_f32(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
}
__device__ __forceinline__ float quick_gelu_f32(float x) { return x / (1.0f + expf(-1.702f * x)); }

// Activation codes shared by the GEMM epilogue and the element-wise kernel.
#define MUDDIT_ACT_NONE 0
#define MUDDIT_ACT_SILU 1
#define MUDDIT_ACT_GELU_TANH 2
#define MUDDIT_ACT_GELU_ERF 3
#define MUDDIT_ACT_QUICK_GELU 4

__device__ __forceinline__ float activate(int act, float x) {
    switch (act) {
        case MUDDIT_ACT_SILU: return silu_f32(x);
        case MUDDIT_ACT_GELU_TANH: return gelu_tanh_f32(x);
        case MUDDIT_ACT_GELU_ERF: return gelu_erf_f32(x);
        case MUDDIT_ACT_QUICK_GELU: return quick_gelu_f32(x);
        default: return x;
    }
}

// A row map: logical row `m` lives at physical row `(m / per) * stride + offset + m % per`.
// It lets one GEMM read or write the text or image part of a joint `[B, L + N, ...]` buffer.
// The identity map is `per = 0x7FFFFFFF, stride = 0, offset = 0`.
struct RowMap {
    i32 per;
    i32 stride;
    i32 offset;
    i32 pad_;
};
__device__ __forceinline__ i64 map_row(const RowMap& r, int m) {
    return (i64)(m / r.per) * r.stride + r.offset + m % r.per;
}

#endif  // MUDDIT_COMMON_CUH
