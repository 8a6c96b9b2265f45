// race_probe.cu: a kernel for the emulator's ThreadSanitizer check only (built into the emulator
// library, never by NVRTC). Every thread writes its slot of shared memory, then reads its
// neighbour's: correct with the barrier in between, a shared-memory race without it. The test
// `race_probe` in kernels/tests/emu_tsan.rs shows that the check catches such a race.
#include "common.cuh"

struct RaceProbeParams {
    u64 out;  // f32 [blockDim.x]
    i32 sync;
    i32 pad_;
};

extern "C" __global__ void race_probe(RaceProbeParams p) {
    __shared__ float slots[64];
    const unsigned t = threadIdx.x;
    slots[t] = (float)t;
    if (p.sync) __syncthreads();
    reinterpret_cast<float*>(p.out)[t] = slots[(t + 1) % blockDim.x];
}
MUDDIT_EXPORT(race_probe, RaceProbeParams)
