//! The emulator's race check, on a probe kernel (`kernels/emu/race_probe.cu`): each thread reads
//! the shared-memory slot its neighbour wrote. With the barrier the result is exact in any build;
//! without it, under ThreadSanitizer (`MUDDIT_EMU_TSAN=1`), TSan must report the race: `.ci/run`
//! runs the ignored test and requires TSan's exit code.
#![cfg(feature = "emulate")]

use muddit_kernels::cuda::nvrtc::Module;
use muddit_kernels::cuda::Launch;
use muddit_kernels::emu;

#[repr(C)]
#[derive(Clone, Copy)]
struct RaceProbeParams {
    out: u64,
    sync: i32,
    pad_: i32,
}

fn probe(sync: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; 64];
    let launch = Launch {
        module: Module::Elementwise,
        kernel: "race_probe",
        grid: [1, 1, 1],
        block: [64, 1, 1],
        smem: 0,
        params: RaceProbeParams {
            out: out.as_mut_ptr() as u64,
            sync: sync as i32,
            pad_: 0,
        },
    };
    // SAFETY: out holds blockDim.x floats.
    unsafe { emu::run(&launch) };
    out
}

#[test]
fn race_probe_with_barrier_reads_the_neighbours_slot() {
    let want: Vec<f32> = (0..64).map(|t| ((t + 1) % 64) as f32).collect();
    assert_eq!(probe(true), want);
}

/// Run by `.ci/run` under ThreadSanitizer, which must abort it with a data race report.
#[test]
#[ignore = "a deliberate shared-memory race: only meaningful under MUDDIT_EMU_TSAN=1"]
fn race_probe_without_barrier() {
    probe(false);
}
