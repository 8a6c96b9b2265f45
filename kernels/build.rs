//! With the `emulate` feature, compiles the CUDA C sources of `cuda/` with the host C++ compiler
//! under the CPU emulator (`emu/cuda_emu.h`, `emu/runtime.cpp`) into a static library that
//! `src/emu` calls. Without it, does nothing: the plain build needs no C++ compiler and no CUDA.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "emulate")]
    emulate::build();
}

#[cfg(feature = "emulate")]
mod emulate {
    use std::path::Path;

    pub fn build() {
        println!("cargo:rerun-if-env-changed=MUDDIT_EMU_TSAN");
        let tsan = std::env::var("MUDDIT_EMU_TSAN").is_ok_and(|v| v == "1");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let (cuda, emu) = (root.join("cuda"), root.join("emu"));
        for dir in [&cuda, &emu] {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
        let mut sources: Vec<_> = std::fs::read_dir(&cuda)
            .expect("kernels/cuda is readable")
            .map(|e| e.expect("kernels/cuda entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "cu"))
            .collect();
        sources.sort();
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .std("c++17")
            .opt_level(2)
            .define("MUDDIT_EMU", None)
            .include(&cuda)
            .include(&emu)
            .flag("-ffp-contract=off")
            .flag("-fno-strict-aliasing")
            .flag("-Wno-unused-parameter")
            .flag("-include")
            .flag(emu.join("cuda_emu.h").to_str().expect("utf-8 path"))
            .file(emu.join("runtime.cpp"))
            .file(emu.join("race_probe.cu"))
            // Everything after this is C++ whatever its extension.
            .flag("-x")
            .flag("c++");
        for s in &sources {
            build.file(s);
        }
        if tsan {
            // The emulator and the kernels instrumented by ThreadSanitizer (runtime.cpp annotates
            // its fibers and barriers); the test binaries link the TSan runtime.
            build.flag("-fsanitize=thread").flag("-g");
            println!("cargo:rustc-link-lib=dylib=tsan");
        }
        build.compile("muddit_emu");
    }
}
