//! Which instructions the CPU kernels use: the level this CPU has (detected once per process,
//! capped by `MUDDIT_ISA`), and for bf16 products which of that level's instructions is the
//! fastest on this CPU family. A leaf module: every kernel file asks here, nothing here asks them.
//!
//! Levels, best last: `portable` (the `gemm` crate and scalar code, every architecture), `avx2`
//! (AVX2 + FMA, 256-bit), `avx512` (AVX-512 F), `avx512bf16` (plus `vdpbf16ps`), `amx` (plus
//! AMX-BF16 tiles, which Linux must also grant the process). The choice between `vdpbf16ps` and
//! widening bf16 to f32 FMAs is a fixed table per CPU family ([`Bf16Path`]), not a timing taken at
//! start-up, so one machine always computes the same way; `cargo bench --bench matmul` measures
//! both on the machine at hand.

use std::sync::OnceLock;

/// The instruction-set levels of the CPU kernels, best last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
    Avx512Bf16,
    Amx,
}

/// The values `MUDDIT_ISA` takes, in [`Isa`] order.
pub const NAMES: [&str; 5] = ["portable", "avx2", "avx512", "avx512bf16", "amx"];

impl Isa {
    pub fn name(self) -> &'static str {
        NAMES[self as usize]
    }

    pub fn parse(s: &str) -> Option<Isa> {
        let all = [
            Isa::Portable,
            Isa::Avx2,
            Isa::Avx512,
            Isa::Avx512Bf16,
            Isa::Amx,
        ];
        NAMES.iter().position(|&n| n == s).map(|i| all[i])
    }

    /// What this CPU (and OS) offers, capped by `MUDDIT_ISA` when it names a level; read once.
    /// An unknown `MUDDIT_ISA` is ignored here; [`check_env`] reports it.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let have = hardware();
            match env_cap() {
                Ok(Some(cap)) => have.min(cap),
                _ => have,
            }
        })
    }

    /// How bf16 products run at this level on this CPU.
    pub fn bf16_path(self) -> Bf16Path {
        match self {
            Isa::Amx => Bf16Path::Tiles,
            Isa::Avx512Bf16 if dot_is_fast() => Bf16Path::Dot,
            Isa::Portable => Bf16Path::Portable,
            _ => Bf16Path::Widened,
        }
    }
}

/// The arithmetic of a bf16 product (bf16 operands, f32 sums), by instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Path {
    /// The `gemm` crate on the bf16-rounded values.
    Portable,
    /// bf16 widened to f32 (exact), f32 FMAs.
    Widened,
    /// `vdpbf16ps`: a pair of bf16 products into each f32 lane.
    Dot,
    /// AMX `tdpbf16ps` on 16 x 32 bf16 tiles.
    Tiles,
}

impl Bf16Path {
    pub fn name(self) -> &'static str {
        match self {
            Bf16Path::Portable => "gemm crate",
            Bf16Path::Widened => "bf16 widened to f32 FMA",
            Bf16Path::Dot => "vdpbf16ps",
            Bf16Path::Tiles => "AMX tdpbf16ps",
        }
    }
}

/// What each dtype's products use on this CPU: `(dtype, level, instruction)` for `f32` and
/// `bf16`, e.g. `("bf16", "avx512bf16", "vdpbf16ps")`.
pub fn kernels() -> [(&'static str, &'static str, &'static str); 2] {
    let isa = Isa::detect();
    let f32_instruction = if isa == Isa::Portable {
        "gemm crate"
    } else {
        "f32 FMA"
    };
    [
        ("f32", isa.min(Isa::Avx512).name(), f32_instruction),
        ("bf16", isa.name(), isa.bf16_path().name()),
    ]
}

/// [`kernels`] as one line, e.g. `f32: avx512 (f32 FMA); bf16: avx512bf16 (vdpbf16ps)`.
pub fn describe() -> String {
    kernels()
        .iter()
        .map(|(dtype, level, instruction)| format!("{dtype}: {level} ({instruction})"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `Err` naming the accepted values when `MUDDIT_ISA` is set to something else.
pub fn check_env() -> Result<(), String> {
    env_cap().map(|_| ())
}

/// The level `MUDDIT_ISA` caps the kernels at: `None` when unset or empty; `Err` for a value
/// that names no level, text or not.
fn env_cap() -> Result<Option<Isa>, String> {
    let Some(value) = std::env::var_os("MUDDIT_ISA").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    value
        .to_str()
        .and_then(Isa::parse)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "MUDDIT_ISA={value:?} is not an instruction-set level (one of {})",
                NAMES.join(", ")
            )
        })
}

#[cfg(target_arch = "x86_64")]
fn hardware() -> Isa {
    // Each level includes the ones below it (every AVX-512 CPU has AVX2 + FMA, every one with
    // AVX512-BF16 has AVX512-BW); checked all the same, so the kernels may rely on it.
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    let avx512 = avx2 && is_x86_feature_detected!("avx512f");
    let bf16 =
        avx512 && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512bf16");
    if bf16 && amx_status().is_ok() {
        Isa::Amx
    } else if bf16 {
        Isa::Avx512Bf16
    } else if avx512 {
        Isa::Avx512
    } else if avx2 {
        Isa::Avx2
    } else {
        Isa::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn hardware() -> Isa {
    Isa::Portable
}

/// Whether AMX-BF16 can be used by this process: the CPU has it (CPUID leaf 7, EDX bits 22 and
/// 24) and Linux granted the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`, asked once per process). `Err` says why not; the first refusal of a CPU
/// that has AMX is also printed once on stderr, since the products then run slower.
pub fn amx_status() -> Result<(), &'static str> {
    static STATUS: OnceLock<Result<(), &'static str>> = OnceLock::new();
    *STATUS.get_or_init(|| {
        let status = request_amx();
        if let Err(why) = status {
            if why.starts_with("Linux") {
                eprintln!("muddit: {why}; bf16 products use AVX-512 instead");
            }
        }
        status
    })
}

#[cfg(target_arch = "x86_64")]
fn request_amx() -> Result<(), &'static str> {
    use std::arch::x86_64::__cpuid_count;
    // CPUID leaf 7 exists wherever AVX-512 does (`hardware` asks only after avx512f was seen).
    let l7 = __cpuid_count(7, 0);
    if l7.edx & (1 << 24) == 0 || l7.edx & (1 << 22) == 0 {
        return Err("the CPU has no AMX-BF16");
    }
    if !cfg!(target_os = "linux") {
        return Err("AMX is only enabled on Linux");
    }
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl only changes this process's permitted xsave features; the syscall
    // clobbers rcx and r11, declared here, and touches no memory of ours.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret == 0 {
        Ok(())
    } else {
        Err("Linux refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM)")
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn request_amx() -> Result<(), &'static str> {
    Err("AMX exists only on x86_64")
}

/// Whether `vdpbf16ps` beats widening bf16 to f32 FMAs on this CPU family. Measured: AMD Zen 4
/// (family 25) and Zen 5 (family 26) run it at twice the f32 FMA rate; Intel's Golden Cove and
/// Raptor Cove servers (family 6: Sapphire Rapids model 143, Emerald Rapids 207) at half of it,
/// so Intel CPUs widen (their bf16 products go to AMX when the OS grants it).
fn dot_is_fast() -> bool {
    // Read once: CPUID is slow, and a virtual machine exits to the host on every one.
    static FAST: OnceLock<bool> = OnceLock::new();
    *FAST.get_or_init(|| !matches!(cpu_family(), Some((Vendor::Intel, _, _))))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Vendor {
    Intel,
    Amd,
    Other,
}

/// Vendor, family and model from CPUID leaves 0 and 1.
#[cfg(target_arch = "x86_64")]
fn cpu_family() -> Option<(Vendor, u32, u32)> {
    use std::arch::x86_64::__cpuid;
    let (v, l1) = (__cpuid(0), __cpuid(1));
    let vendor = match (v.ebx, v.edx, v.ecx) {
        (0x756e_6547, 0x4965_6e69, 0x6c65_746e) => Vendor::Intel, // "GenuineIntel"
        (0x6874_7541, 0x6974_6e65, 0x444d_4163) => Vendor::Amd,   // "AuthenticAMD"
        _ => Vendor::Other,
    };
    let base_family = (l1.eax >> 8) & 0xf;
    let family = if base_family == 0xf {
        base_family + ((l1.eax >> 20) & 0xff)
    } else {
        base_family
    };
    let mut model = (l1.eax >> 4) & 0xf;
    if base_family == 0x6 || base_family == 0xf {
        model |= ((l1.eax >> 16) & 0xf) << 4;
    }
    Some((vendor, family, model))
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_family() -> Option<(Vendor, u32, u32)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_order() {
        for (i, name) in NAMES.iter().enumerate() {
            let isa = Isa::parse(name).unwrap();
            assert_eq!(isa.name(), *name);
            assert_eq!(isa as usize, i);
        }
        assert_eq!(Isa::parse("avx-512"), None);
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx512Bf16 < Isa::Amx);
    }

    #[test]
    fn every_level_has_a_bf16_path() {
        assert_eq!(Isa::Portable.bf16_path(), Bf16Path::Portable);
        assert_eq!(Isa::Avx2.bf16_path(), Bf16Path::Widened);
        assert_eq!(Isa::Avx512.bf16_path(), Bf16Path::Widened);
        assert_eq!(Isa::Amx.bf16_path(), Bf16Path::Tiles);
        let dot = Isa::Avx512Bf16.bf16_path();
        assert!(dot == Bf16Path::Dot || dot == Bf16Path::Widened);
        println!("this CPU: {:?}; {}", cpu_family(), describe());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn family_matches_proc_cpuinfo() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            println!("skipped: no /proc/cpuinfo");
            return;
        };
        let field = |key: &str| {
            info.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        let (_, family, model) = cpu_family().unwrap();
        assert_eq!(Some(family), field("cpu family"));
        assert_eq!(Some(model), field("model\t"));
    }
}
