// cuda_emu.h: just enough of CUDA C++ for the muddit kernels to compile with g++ and run on a
// CPU with CUDA semantics. Force-included (`-include`) before every kernels/cuda/*.cu file.
//
// Execution model:
// - A launch runs its blocks on a few OS worker threads (`MUDDIT_EMU_THREADS`, default the
//   hardware's); each worker runs one block at a time.
// - Every CUDA thread of a block is a fiber (ucontext) on that worker. Fibers switch only at
//   barriers (`__syncthreads`, the warp-level exchanges), so the schedule is deterministic.
// - `__shared__` is `static thread_local`: one copy per worker, i.e. per running block, shared by
//   its fibers. Dynamic shared memory is a per-worker buffer filled with 0xFF (NaN as f32 and
//   bf16) before every block, so a read of memory nobody wrote shows.
// - A thread that returns early leaves every barrier of its block and warp, as on the device.
// - Warp shuffles, ldmatrix and mma.sync exchange values through a per-warp slot table between
//   two warp barriers; their results follow the PTX ISA fragment layouts (see common.cuh).
// - cp.async copies are queued per thread and performed at `cp.async.wait_group`.
// - A barrier no live thread can pass aborts the process with a message (a deadlock).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static thread_local

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};

namespace emu {

// Grid and block sizes of one launch, as the Rust side passes them.
struct LaunchDims {
    unsigned grid[3];
    unsigned block[3];
    unsigned long long dynamic_smem;
};

const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
void* dynamic_shared();
void syncthreads();
void syncwarp();
unsigned long long shfl_bits(unsigned long long v, int src_lane, int mode);
void mma_bf16_16816(float c[4], const unsigned a[4], const unsigned b[2]);
void ldmatrix_x4(unsigned r[4], const void* smem_row, bool trans);
void cp_async_16(void* smem, const void* gmem, bool valid);
void cp_async_commit();
void cp_async_wait(int n);
void launch(LaunchDims dims, void (*kernel)(const void*), const void* params);

// Shuffle modes.
constexpr int SHFL_IDX = 0, SHFL_XOR = 1, SHFL_DOWN = 2, SHFL_UP = 3;

template <typename T>
inline T shfl(T v, int arg, int mode) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 64 bits");
    unsigned long long bits = 0;
    memcpy(&bits, &v, sizeof(T));
    bits = shfl_bits(bits, arg, mode);
    T out;
    memcpy(&out, &bits, sizeof(T));
    return out;
}

}  // namespace emu

#define threadIdx (emu::thread_idx())
#define blockIdx (emu::block_idx())
#define blockDim (emu::block_dim())
#define gridDim (emu::grid_dim())

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xFFFFFFFFu) { emu::syncwarp(); }

// The warp shuffles, one emulator exchange each (lane mask ignored: whole warps only).
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int m) { return emu::shfl(v, m, emu::SHFL_XOR); }
template <typename T>
inline T __shfl_sync(unsigned, T v, int src) { return emu::shfl(v, src, emu::SHFL_IDX); }
template <typename T>
inline T __shfl_down_sync(unsigned, T v, int d) { return emu::shfl(v, d, emu::SHFL_DOWN); }
template <typename T>
inline T __shfl_up_sync(unsigned, T v, int d) { return emu::shfl(v, d, emu::SHFL_UP); }

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float exp2f_(float x) { return exp2f(x); }
// The bits of `from` read as a `To` of the same size.
template <typename To, typename From>
inline To bits_as(From from) {
    static_assert(sizeof(To) == sizeof(From), "bit casts keep the size");
    To to;
    memcpy(&to, &from, sizeof to);
    return to;
}
inline float __int_as_float(int v) { return bits_as<float>(v); }
inline int __float_as_int(float f) { return bits_as<int>(f); }
inline float __uint_as_float(unsigned v) { return bits_as<float>(v); }
inline unsigned __float_as_uint(float f) { return bits_as<unsigned>(f); }
inline long long __double_as_longlong(double d) { return bits_as<long long>(d); }

// Atomics: blocks run on several OS threads, so these are real atomic operations.
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* a, unsigned v) {
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);
}
inline int atomicMin(int* a, int v) {
    int old = __atomic_load_n(a, __ATOMIC_SEQ_CST);
    while (v < old && !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_SEQ_CST,
                                                   __ATOMIC_SEQ_CST)) {
    }
    return old;
}
