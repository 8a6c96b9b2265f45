//! The CUDA C sources, embedded in the binary, and their NVRTC build with an on-disk PTX cache.
//!
//! One module per `.cu` file. The program NVRTC sees is `common.cuh`, a `#line` marker, then the
//! file (the file's own `#include "common.cuh"` is guarded out), compiled with [`OPTIONS`] and
//! `--gpu-architecture=compute_XX` of the device. `kernels/check-compile.sh` builds the very same
//! strings. PTX is cached as `<cache>/<hash>-sm_XX.ptx`, the hash (FNV-1a, 64 bits) covering the
//! source, the options and the NVRTC version; `<cache>` is `$MUDDIT_PTX_CACHE`, else
//! `$XDG_CACHE_HOME/muddit/ptx`, else `$HOME/.cache/muddit/ptx`. A cache that cannot be read
//! or written only costs a compile.

use std::path::PathBuf;

use super::CudaError;

/// NVRTC options besides the architecture. Keep in step with `kernels/check-compile.sh`.
pub const OPTIONS: [&str; 3] = ["--std=c++17", "--fmad=true", "-DMUDDIT_NVRTC"];

const COMMON: &str = include_str!("../../cuda/common.cuh");

/// One CUDA C file of `kernels/cuda/`, compiled and loaded as one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Module {
    Norm,
    Gemm,
    Attention,
    Rope,
    Elementwise,
    Sampler,
    Vq,
}

impl Module {
    pub const ALL: [Module; 7] = [
        Module::Norm,
        Module::Gemm,
        Module::Attention,
        Module::Rope,
        Module::Elementwise,
        Module::Sampler,
        Module::Vq,
    ];

    /// The file name under `kernels/cuda/`.
    pub fn file(self) -> &'static str {
        match self {
            Module::Norm => "norm.cu",
            Module::Gemm => "gemm.cu",
            Module::Attention => "attention.cu",
            Module::Rope => "rope.cu",
            Module::Elementwise => "elementwise.cu",
            Module::Sampler => "sampler.cu",
            Module::Vq => "vq.cu",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Module::Norm => include_str!("../../cuda/norm.cu"),
            Module::Gemm => include_str!("../../cuda/gemm.cu"),
            Module::Attention => include_str!("../../cuda/attention.cu"),
            Module::Rope => include_str!("../../cuda/rope.cu"),
            Module::Elementwise => include_str!("../../cuda/elementwise.cu"),
            Module::Sampler => include_str!("../../cuda/sampler.cu"),
            Module::Vq => include_str!("../../cuda/vq.cu"),
        }
    }

    /// The whole program handed to NVRTC.
    pub fn source(self) -> String {
        format!("{COMMON}\n#line 1 \"{}\"\n{}", self.file(), self.body())
    }
}

/// 64-bit FNV-1a over several byte strings, each followed by a 0 byte.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(&[0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Where PTX is cached (see the module docs); `None` when no home is known.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = env("MUDDIT_PTX_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = env("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("muddit").join("ptx"));
    }
    env("HOME").map(|h| PathBuf::from(h).join(".cache").join("muddit").join("ptx"))
}

/// The cache file name of `module` for compute capability `sm` (e.g. 90) under NVRTC `version`.
pub fn cache_name(module: Module, sm: u32, version: (i32, i32)) -> String {
    let version = format!("{}.{}", version.0, version.1);
    let source = module.source();
    let mut parts: Vec<&[u8]> = vec![source.as_bytes(), version.as_bytes()];
    parts.extend(OPTIONS.iter().map(|o| o.as_bytes()));
    format!("{:016x}-sm_{sm}.ptx", fnv1a(&parts))
}

/// Shared-library names NVRTC may have (as cudarc looks them up).
const NVRTC_NAMES: [&str; 3] = ["libnvrtc.so", "libnvrtc.so.12", "libnvrtc.so.13"];

/// Fails with [`CudaError::NoNvrtc`] unless an NVRTC library can be loaded.
pub fn check_nvrtc() -> Result<(), CudaError> {
    // SAFETY: is_culib_present only dlopens candidate names and drops the handles; loading
    // libnvrtc runs no initialisation code with preconditions of ours.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Ok(());
    }
    Err(CudaError::NoNvrtc {
        tried: NVRTC_NAMES.join(", "),
    })
}

/// NVRTC's `(major, minor)`, `(0, 0)` if it will not say.
fn nvrtc_version() -> (i32, i32) {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: called after check_nvrtc found the library; nvrtcVersion writes two ints through
    // the valid pointers it is given and has no other effect.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    match status == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        true => (major, minor),
        false => (0, 0),
    }
}

/// PTX of `module` for compute capability `sm`, from the cache or compiled now (and cached).
pub fn ptx(module: Module, sm: u32) -> Result<String, CudaError> {
    check_nvrtc()?;
    let version = nvrtc_version();
    let cached = cache_dir().map(|d| d.join(cache_name(module, sm, version)));
    if let Some(text) = cached
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
    {
        return Ok(text);
    }
    let arch = format!("--gpu-architecture=compute_{sm}");
    let mut options: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    options.push(arch.clone());
    let opts = cudarc::nvrtc::CompileOptions {
        options,
        name: Some(module.file().to_string()),
        ..Default::default()
    };
    let compiled = cudarc::nvrtc::compile_ptx_with_opts(module.source(), opts).map_err(|e| {
        let log = match e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                log.to_string_lossy().into_owned()
            }
            other => format!("{other:?}"),
        };
        CudaError::Compile {
            file: module.file(),
            arch: format!("sm_{sm}"),
            log,
        }
    })?;
    let text = compiled.to_src();
    if let Some(path) = cached {
        // Written under a temporary name then renamed, so a reader never sees half a file.
        if let Some(dir) = path.parent() {
            let tmp = dir.join(format!(".{}.{}", std::process::id(), module.file()));
            let written = std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::write(&tmp, &text))
                .and_then(|_| std::fs::rename(&tmp, &path));
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_differ_by_module_arch_and_version() {
        let a = cache_name(Module::Norm, 90, (12, 9));
        assert!(a.ends_with("-sm_90.ptx") && a.len() == 16 + "-sm_90.ptx".len());
        assert_eq!(a, cache_name(Module::Norm, 90, (12, 9)));
        assert_ne!(a, cache_name(Module::Norm, 90, (12, 8)));
        assert_ne!(a, cache_name(Module::Gemm, 90, (12, 9)));
        assert!(cache_name(Module::Norm, 80, (12, 9)).ends_with("-sm_80.ptx"));
    }

    #[test]
    fn every_source_starts_with_common_and_marks_its_file() {
        for m in Module::ALL {
            let s = m.source();
            assert!(s.starts_with("// common.cuh"));
            assert!(s.contains(&format!("#line 1 \"{}\"", m.file())));
        }
    }
}
