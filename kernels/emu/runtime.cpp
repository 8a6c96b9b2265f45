// runtime.cpp: the CPU emulator behind cuda_emu.h (fibers, barriers, warp exchanges, the
// PTX fragment layouts of mma.sync and ldmatrix, deferred cp.async). See cuda_emu.h for the model.
#include "cuda_emu.h"

#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <cstdio>

// Under ThreadSanitizer (`MUDDIT_EMU_TSAN=1`, see build.rs) every emulated CUDA thread is a TSan
// fiber and every barrier a release/acquire pair, so TSan checks the kernels' own
// synchronisation: a shared-memory race inside a block (a missing __syncthreads) as well as a
// race between blocks on different workers.
// The scheduler's own bookkeeping (barrier counters, progress, the current fiber) is shared by
// the fibers of a block by design; under TSan it is accessed atomically so that only the
// kernels' memory is checked. Fibers switch without synchronising (`no_sync`): only barriers
// order them, as on the device.
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define EMU_TSAN 1
#define EMU_GET(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define EMU_SET(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#else
#define EMU_GET(x) (x)
#define EMU_SET(x, v) ((x) = (v))
#endif
#include <cstdlib>
#include <thread>
#include <vector>

// Fiber switches. glibc's swapcontext saves and restores the signal mask with a system call
// on every switch, which made it most of the emulator's time; on x86_64 a switch here is the
// System V callee-saved registers pushed on the old stack and popped from the new one.
#if defined(__x86_64__)
extern "C" void muddit_emu_swap(void** save_sp, void* next_sp);
asm(R"(
    .text
    .p2align 4
    .globl muddit_emu_swap
    .hidden muddit_emu_swap
    .type muddit_emu_swap, @function
muddit_emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size muddit_emu_swap, .-muddit_emu_swap
)");
#endif

namespace emu {
namespace {

// A suspended execution context: a fiber's or the scheduler's.
#if defined(__x86_64__)
struct Context {
    void* sp = nullptr;
};

// What resuming `c` needs. Read before TSan is told of a switch: after it, the read would
// count as the next fiber's, unordered with the write that suspended `c`.
using Resume = void*;
inline Resume resume_of(Context& c) { return c.sp; }

// Saves the running context into `from` and resumes `to`.
inline void swap(Context& from, Resume to) { muddit_emu_swap(&from.sp, to); }

// Makes `c` start `entry` (which never returns) on the stack [stack, stack + size).
void prepare(Context& c, char* stack, size_t size, void (*entry)()) {
    // Top of stack, 16-byte aligned: a zero return address for `entry` (never used), `entry`
    // itself for muddit_emu_swap's `ret`, then six zero callee-saved registers. `entry` starts
    // with rsp = top - 8, as after a call from an aligned frame.
    auto top = reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t{15};
    auto* words = reinterpret_cast<void**>(top);
    words[-1] = nullptr;
    words[-2] = reinterpret_cast<void*>(entry);
    for (int i = 3; i <= 8; i++) words[-i] = nullptr;
    c.sp = &words[-8];
}
#else
struct Context {
    ucontext_t uc;
};

using Resume = ucontext_t*;
inline Resume resume_of(Context& c) { return &c.uc; }

inline void swap(Context& from, Resume to) { swapcontext(&from.uc, to); }

void prepare(Context& c, char* stack, size_t size, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

// Bytes of stack per emulated thread (mapped lazily).
constexpr size_t kStack = 256 << 10;
// Words per lane in the warp exchange table: mma needs 6 (a[4], b[2]).
constexpr int kSlots = 8;
// The device's limits this emulator enforces.
constexpr unsigned kMaxThreads = 1024;
constexpr unsigned long long kMaxDynamicSmem = 227 << 10;

struct Copy {
    void* dst;
    const void* src;
    bool valid;
};

struct Fiber {
    Context ctx;
    void* tsan = nullptr;
    uint3 tid;
    int warp = 0, lane = 0;
    bool done = false;
    std::vector<Copy> open;
    std::vector<std::vector<Copy>> groups;
};

struct Barrier {
    int expected = 0, arrived = 0;
    unsigned gen = 0;
};

struct Worker {
    std::vector<Fiber> fibers;
    char* stacks = nullptr;
    size_t stack_count = 0;
    Context sched;
    void* tsan_sched = nullptr;
    int current = 0;
    uint3 bidx{0, 0, 0};
    dim3 bdim{1, 1, 1}, gdim{1, 1, 1};
    unsigned char* smem = nullptr;
    size_t smem_size = 0;
    Barrier block_bar;
    std::vector<Barrier> warp_bar;
    std::vector<unsigned long long> slots;  // [warps][32][kSlots]
    unsigned long long progress = 0;
    void (*kernel)(const void*) = nullptr;
    const void* params = nullptr;

    ~Worker() {
#ifdef EMU_TSAN
        for (Fiber& f : fibers)
            if (f.tsan) __tsan_destroy_fiber(f.tsan);
#endif
        if (stacks) munmap(stacks, stack_count * kStack);
        free(smem);
    }
};

thread_local Worker* W = nullptr;

[[noreturn]] void fail(const char* what) {
    fprintf(stderr, "muddit emulator: %s\n", what);
    abort();
}

Fiber& cur() { return W->fibers[EMU_GET(W->current)]; }

unsigned long long& slot(int warp, int lane, int k) {
    return W->slots[((size_t)warp * 32 + lane) * kSlots + k];
}

// Suspends the current fiber; the scheduler resumes it later.
void yield() {
    const Resume sched = resume_of(W->sched);
#ifdef EMU_TSAN
    __tsan_switch_to_fiber(W->tsan_sched, __tsan_switch_to_fiber_no_sync);
#endif
    swap(cur().ctx, sched);
}

void progress() { EMU_SET(W->progress, EMU_GET(W->progress) + 1); }

void wait(Barrier& b) {
    progress();
#ifdef EMU_TSAN
    __tsan_release(&b);
#endif
    const unsigned g = EMU_GET(b.gen);
    const int arrived = EMU_GET(b.arrived) + 1;
    if (arrived == EMU_GET(b.expected)) {
        EMU_SET(b.arrived, 0);
        EMU_SET(b.gen, g + 1);
    } else {
        EMU_SET(b.arrived, arrived);
        while (EMU_GET(b.gen) == g) yield();
    }
#ifdef EMU_TSAN
    __tsan_acquire(&b);
#endif
}

void drop(Barrier& b) {
#ifdef EMU_TSAN
    __tsan_release(&b);
#endif
    const int expected = EMU_GET(b.expected) - 1;
    EMU_SET(b.expected, expected);
    const int arrived = EMU_GET(b.arrived);
    if (arrived > 0 && arrived == expected) {
        EMU_SET(b.arrived, 0);
        EMU_SET(b.gen, EMU_GET(b.gen) + 1);
    }
}

void fiber_entry() {
#ifdef EMU_TSAN
    __tsan_acquire(W);  // the block's set-up (released in run_block)
#endif
    Fiber& f = cur();
    W->kernel(W->params);
    f.open.clear();
    f.groups.clear();
    drop(W->block_bar);
    drop(W->warp_bar[f.warp]);
    progress();
    Worker* w = W;
    const Resume resume = resume_of(w->sched);
    EMU_SET(f.done, true);
#ifdef EMU_TSAN
    void* sched = w->tsan_sched;
    __tsan_release(&f);
    __tsan_switch_to_fiber(sched, __tsan_switch_to_fiber_no_sync);
#endif
    // Never resumed: the scheduler sees `done`.
    swap(f.ctx, resume);
}

void run_block(unsigned linear) {
    Worker& w = *W;
    const unsigned n = w.bdim.x * w.bdim.y * w.bdim.z;
    w.bidx = {linear % w.gdim.x, (linear / w.gdim.x) % w.gdim.y, linear / (w.gdim.x * w.gdim.y)};
    if (w.smem_size) memset(w.smem, 0xFF, w.smem_size);
    const int warps = (n + 31) / 32;
    w.block_bar = Barrier{(int)n, 0, 0};
    w.warp_bar.assign(warps, Barrier{});
    for (int i = 0; i < warps; i++) w.warp_bar[i].expected = std::min(32, (int)n - 32 * i);
    w.slots.assign((size_t)warps * 32 * kSlots, 0);
    w.fibers.resize(n);
    for (unsigned i = 0; i < n; i++) {
        Fiber& f = w.fibers[i];
        f.tid = {i % w.bdim.x, (i / w.bdim.x) % w.bdim.y, i / (w.bdim.x * w.bdim.y)};
        f.warp = i / 32;
        f.lane = i % 32;
        f.done = false;
        f.open.clear();
        f.groups.clear();
        prepare(f.ctx, w.stacks + (size_t)i * kStack, kStack, fiber_entry);
#ifdef EMU_TSAN
        if (!f.tsan) f.tsan = __tsan_create_fiber(0);
#endif
    }
#ifdef EMU_TSAN
    // The set-up happens before every fiber of the block runs.
    __tsan_release(&w);
#endif
    for (;;) {
        const unsigned long long before = EMU_GET(w.progress);
        bool live = false;
        for (unsigned i = 0; i < n; i++) {
            if (EMU_GET(w.fibers[i].done)) continue;
            live = true;
            EMU_SET(w.current, (int)i);
            const Resume next = resume_of(w.fibers[i].ctx);
#ifdef EMU_TSAN
            __tsan_switch_to_fiber(w.fibers[i].tsan, __tsan_switch_to_fiber_no_sync);
#endif
            swap(w.sched, next);
        }
        if (!live) break;
        if (EMU_GET(w.progress) == before) fail("deadlock: a barrier that no live thread of the block can pass");
    }
#ifdef EMU_TSAN
    // The block's fibers happen before the next block's set-up on this worker.
    for (unsigned i = 0; i < n; i++) __tsan_acquire(&w.fibers[i]);
#endif
}

void run_worker(LaunchDims d, void (*kernel)(const void*), const void* params, unsigned first,
                unsigned step, unsigned blocks) {
    Worker w;
    W = &w;
#ifdef EMU_TSAN
    w.tsan_sched = __tsan_get_current_fiber();
#endif
    w.bdim = {d.block[0], d.block[1], d.block[2]};
    w.gdim = {d.grid[0], d.grid[1], d.grid[2]};
    w.kernel = kernel;
    w.params = params;
    const unsigned n = d.block[0] * d.block[1] * d.block[2];
    w.stack_count = n;
    void* s = mmap(nullptr, n * kStack, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s == MAP_FAILED) fail("cannot map fiber stacks");
    w.stacks = static_cast<char*>(s);
    w.smem_size = d.dynamic_smem;
    if (w.smem_size) {
        w.smem = static_cast<unsigned char*>(aligned_alloc(128, (w.smem_size + 127) / 128 * 128));
        if (!w.smem) fail("cannot allocate dynamic shared memory");
    }
    for (unsigned b = first; b < blocks; b += step) run_block(b);
    W = nullptr;
}

unsigned worker_count(unsigned blocks) {
    unsigned n = std::max(1u, std::thread::hardware_concurrency());
    if (const char* env = getenv("MUDDIT_EMU_THREADS")) n = std::max(1, atoi(env));
    return std::min(n, blocks);
}

}  // namespace

const uint3& thread_idx() { return cur().tid; }
const uint3& block_idx() { return W->bidx; }
const dim3& block_dim() { return W->bdim; }
const dim3& grid_dim() { return W->gdim; }
void* dynamic_shared() { return W->smem; }

void syncthreads() { wait(W->block_bar); }
void syncwarp() { wait(W->warp_bar[cur().warp]); }

unsigned long long shfl_bits(unsigned long long v, int arg, int mode) {
    Fiber& f = cur();
    slot(f.warp, f.lane, 0) = v;
    syncwarp();
    int src = f.lane;
    switch (mode) {
        case SHFL_XOR: src = f.lane ^ arg; break;
        case SHFL_DOWN: src = f.lane + arg; break;
        case SHFL_UP: src = f.lane - arg; break;
        default: src = arg & 31; break;
    }
    if (src < 0 || src > 31) src = f.lane;
    unsigned long long r = slot(f.warp, src, 0);
    syncwarp();
    return r;
}

void mma_bf16_16816(float c[4], const unsigned a[4], const unsigned b[2]) {
    Fiber& f = cur();
    for (int i = 0; i < 4; i++) slot(f.warp, f.lane, i) = a[i];
    for (int i = 0; i < 2; i++) slot(f.warp, f.lane, 4 + i) = b[i];
    syncwarp();
    auto half = [](unsigned long long reg, int k) {
        unsigned bits = (unsigned)(reg >> (16 * (k & 1))) & 0xFFFFu;
        return __uint_as_float(bits << 16);
    };
    auto A = [&](int r, int k) {
        int lane = (r % 8) * 4 + (k % 8) / 2;
        int reg = (r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
        return half(slot(f.warp, lane, reg), k);
    };
    auto B = [&](int k, int n) {
        int lane = n * 4 + (k % 8) / 2;
        int reg = k >= 8 ? 1 : 0;
        return half(slot(f.warp, lane, 4 + reg), k);
    };
    const int g = f.lane / 4, t = f.lane % 4;
    for (int i = 0; i < 4; i++) {
        const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        float acc = 0.0f;
        for (int k = 0; k < 16; k++) acc += A(row, k) * B(k, col);
        c[i] += acc;
    }
    syncwarp();
}

void ldmatrix_x4(unsigned r[4], const void* smem_row, bool trans) {
    Fiber& f = cur();
    slot(f.warp, f.lane, 0) = (unsigned long long)(uintptr_t)smem_row;
    syncwarp();
    auto row_ptr = [&](int lane) {
        return reinterpret_cast<const unsigned short*>((uintptr_t)slot(f.warp, lane, 0));
    };
    const int g = f.lane / 4, t = f.lane % 4;
    for (int j = 0; j < 4; j++) {
        if (!trans) {
            const unsigned short* p = row_ptr(8 * j + g);
            r[j] = (unsigned)p[2 * t] | ((unsigned)p[2 * t + 1] << 16);
        } else {
            unsigned lo = row_ptr(8 * j + 2 * t)[g];
            unsigned hi = row_ptr(8 * j + 2 * t + 1)[g];
            r[j] = lo | (hi << 16);
        }
    }
    syncwarp();
}

void cp_async_16(void* smem, const void* gmem, bool valid) {
    cur().open.push_back(Copy{smem, gmem, valid});
}

void cp_async_commit() {
    Fiber& f = cur();
    f.groups.push_back(std::move(f.open));
    f.open.clear();
}

void cp_async_wait(int n) {
    Fiber& f = cur();
    while ((int)f.groups.size() > n) {
        for (const Copy& c : f.groups.front()) {
            if (c.valid)
                memcpy(c.dst, c.src, 16);
            else
                memset(c.dst, 0, 16);
        }
        f.groups.erase(f.groups.begin());
    }
}

void launch(LaunchDims d, void (*kernel)(const void*), const void* params) {
    const unsigned blocks = d.grid[0] * d.grid[1] * d.grid[2];
    const unsigned threads = d.block[0] * d.block[1] * d.block[2];
    if (threads == 0 || threads > kMaxThreads) fail("block size outside 1..=1024 threads");
    if (d.dynamic_smem > kMaxDynamicSmem) fail("dynamic shared memory above 227 KiB");
    if (blocks == 0) return;
    const unsigned workers = worker_count(blocks);
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < workers; i++)
        pool.emplace_back(run_worker, d, kernel, params, i, workers, blocks);
    run_worker(d, kernel, params, 0, workers, blocks);
    for (auto& t : pool) t.join();
}

}  // namespace emu
