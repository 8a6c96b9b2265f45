#!/usr/bin/env bash
# Compiles every CUDA kernel of kernels/cuda/ for sm_80, sm_89 and sm_90 without a GPU.
#
# 1. Installs NVRTC, the CUDA headers and ptxas from PyPI wheels into a cache folder
#    (${MUDDIT_CUDA_CACHE:-$HOME/.cache/muddit/cuda-wheels}), once.
# 2. Compiles each .cu file to PTX with NVRTC, through a small Python ctypes driver, from the
#    same source string and options as kernels/src/cuda/nvrtc.rs: common.cuh, a #line marker,
#    then the file; `--std=c++17 --gpu-architecture=compute_XX --fmad=true -DMUDDIT_NVRTC`.
# 3. Assembles each PTX with `ptxas -v --warn-on-spills -Werror` and prints registers, shared
#    memory, stack and spills per kernel and architecture.
#
# Usage: kernels/check-compile.sh [--write]   (--write also rewrites kernels/RESOURCES.md)
# Exits non-zero on any compile error, ptxas error or register spill.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${MUDDIT_CUDA_CACHE:-$HOME/.cache/muddit/cuda-wheels}"
# Pinned so that the resource table only changes when the kernels do.
wheels=(nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-nvcc-cu12==12.9.86)
stamp="$cache/.installed-$(echo "${wheels[*]}" | cksum | cut -d' ' -f1)"
if [[ ! -f "$stamp" ]]; then
    echo "installing ${wheels[*]} into $cache" >&2
    mkdir -p "$cache"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
        --target "$cache" "${wheels[@]}"
    touch "$stamp"
fi
nvrtc_lib="$cache/nvidia/cuda_nvrtc/lib"
ptxas="$cache/nvidia/cuda_nvcc/bin/ptxas"
[[ -x "$ptxas" ]] || chmod +x "$ptxas"
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

write=0
[[ "${1:-}" == "--write" ]] && write=1

exec python3 - "$here" "$nvrtc_lib" "$ptxas" "$write" <<'PY'
import ctypes, os, re, subprocess, sys, tempfile

here, nvrtc_lib, ptxas, write = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
ARCHS = ["80", "89", "90"]
# Keep in step with OPTIONS in kernels/src/cuda/nvrtc.rs.
OPTIONS = ["--std=c++17", "--fmad=true", "-DMUDDIT_NVRTC"]

lib = ctypes.CDLL(os.path.join(nvrtc_lib, "libnvrtc.so.12"))
lib.nvrtcGetErrorString.restype = ctypes.c_char_p
prog_t = ctypes.c_void_p

def check(code, what):
    if code != 0:
        raise RuntimeError(f"{what}: {lib.nvrtcGetErrorString(code).decode()}")

def source(name):
    cuda = os.path.join(here, "cuda")
    common = open(os.path.join(cuda, "common.cuh")).read()
    body = open(os.path.join(cuda, name)).read()
    return common + f'\n#line 1 "{name}"\n' + body

def compile_ptx(name, arch):
    src = source(name).encode()
    prog = prog_t()
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), src, name.encode(), 0, None, None), "create")
    opts = OPTIONS + [f"--gpu-architecture=compute_{arch}"]
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    code = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    log = log.value.decode(errors="replace").strip()
    if code != 0:
        raise RuntimeError(f"NVRTC failed on {name} for compute_{arch}:\n{log}")
    if log:
        print(f"NVRTC warnings on {name} (compute_{arch}):\n{log}", file=sys.stderr)
        raise RuntimeError("warnings are errors")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    check(lib.nvrtcGetPTX(prog, ptx), "get ptx")
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode()

def assemble(ptx, arch, tmp, stem):
    path = os.path.join(tmp, f"{stem}-sm_{arch}.ptx")
    open(path, "w").write(ptx)
    out = subprocess.run([ptxas, f"-arch=sm_{arch}", "-v", "--warn-on-spills", "-Werror",
                          path, "-o", path + ".cubin"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ptxas failed on {stem} for sm_{arch}:\n{out.stdout}{out.stderr}")
    rows, func = {}, None
    for line in (out.stdout + out.stderr).splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            func = m.group(1)
            rows[func] = {"regs": 0, "smem": 0, "stack": 0, "spill": 0}
            continue
        if func is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            rows[func]["stack"] = int(m.group(1))
            rows[func]["spill"] = int(m.group(2)) + int(m.group(3))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            rows[func]["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            rows[func]["smem"] = int(s.group(1)) if s else 0
    return rows

files = sorted(f for f in os.listdir(os.path.join(here, "cuda")) if f.endswith(".cu"))
table, failures = {}, []
with tempfile.TemporaryDirectory() as tmp:
    for name in files:
        for arch in ARCHS:
            try:
                rows = assemble(compile_ptx(name, arch), arch, tmp, name[:-3])
            except RuntimeError as e:
                failures.append(str(e))
                continue
            for func, r in rows.items():
                table.setdefault((name, func), {})[arch] = r

lines = ["| file | kernel | " + " | ".join(f"sm_{a} regs / static smem / stack / spill" for a in ARCHS) + " |",
         "|---|---|" + "---|" * len(ARCHS)]
for (name, func), per in sorted(table.items()):
    cells = []
    for a in ARCHS:
        r = per.get(a)
        cells.append("-" if r is None else f"{r['regs']} / {r['smem']} B / {r['stack']} B / {r['spill']} B")
    lines.append(f"| {name} | `{func}` | " + " | ".join(cells) + " |")
print("\n".join(lines))
spills = [(n, f, a) for (n, f), per in table.items() for a, r in per.items() if r["spill"] > 0]
for n, f, a in spills:
    failures.append(f"{f} ({n}) spills registers on sm_{a}")

if write and not failures:
    path = os.path.join(here, "RESOURCES.md")
    head = ("# Kernel resources\n\n"
            "Written by `kernels/check-compile.sh --write` (NVRTC and ptxas 12.9 from the PyPI wheels,\n"
            "the options of `kernels/src/cuda/nvrtc.rs`). Registers per thread, static shared memory\n"
            "per block (dynamic shared memory is set at launch: see each kernel's header), stack\n"
            "frame and spill bytes. A change here in review means a kernel's footprint changed.\n\n")
    open(path, "w").write(head + "\n".join(lines) + "\n")

if failures:
    print("\n".join(failures), file=sys.stderr)
    print(f"check-compile: {len(failures)} failure(s)", file=sys.stderr)
    sys.exit(1)
print(f"check-compile: {len(table)} kernels in {len(files)} files compiled for sm_{', sm_'.join(ARCHS)}", file=sys.stderr)
PY
