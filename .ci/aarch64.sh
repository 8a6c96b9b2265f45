#!/usr/bin/env bash
# The portable path on aarch64: the kernels, sampler and engine crates and the parity tests
# cross-compiled for aarch64-unknown-linux-gnu and run under qemu-user (the x86 code compiled
# out, products on the gemm crate). Installs the Rust target, Debian's cross compilers (for the
# tokenizer's C code) and qemu-user when they are missing. (The edit pipeline tests pass there
# too but take 13 minutes under qemu: `bash .ci/aarch64.sh` does not run them.)
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
if ! command -v qemu-aarch64 > /dev/null || ! command -v aarch64-linux-gnu-g++ > /dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
cargo test --target "$target" --release -p muddit-kernels -p muddit-sampler -p muddit-engine
cargo test --target "$target" --release -p muddit-tests --test clip_parity --test tokenizer_parity \
    --test transformer_parity --test vq_parity --test pipeline_parity --test transformer_errors \
    --test sides_errors
