#!/usr/bin/env python
"""What nvcc made of the CUDA kernels, read from the built extension without a GPU.

For each architecture (sm_80, sm_90) it runs `cuobjdump -res-usage` and
`cuobjdump -sass` on gru_torch's compiled library and reports, per kernel: registers,
shared memory, stack, local-memory spills (LDL/STL) in the whole kernel and in its
step loops (the loops that hold its HMMA or barrier instructions), HMMA counts and the
instruction mix. It then checks the project's codegen rules:

  * no LDL/STL in any step loop of the persistent kernels (every cell), and none anywhere in
    the other kernels (the per-step pointwise kernels, the device self-tests);
  * HMMA instructions in the step loops of every persistent kernel (16-bit and tf32);
  * registers within the design's budget: one CTA of the kernel's threads per SM
    (registers x threads <= 65536, at most 255 a thread).

Usage (from the repository root, in the venv):
  python scripts/sass_report.py            # write benchmarks/results/sass-<arch>.json
  python scripts/sass_report.py --check    # only check; exit 1 on a broken rule
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARCHS = ("sm_80", "sm_90")
REGS_PER_SM = 65536


def find_cuobjdump() -> str | None:
    """The CUDA toolkit's cuobjdump, else the copy triton ships, else PATH's."""
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidates = [Path(home) / "bin" / "cuobjdump"]
    try:
        import triton

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    except ImportError:
        pass
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return shutil.which("cuobjdump")


def find_library() -> Path:
    import gru_torch._C as ext  # the prebuilt extension

    return Path(ext.__file__)


def demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


@dataclass
class Kernel:
    name: str                 # demangled
    mangled: str
    registers: int = 0
    shared: int = 0
    stack: int = 0
    local: int = 0
    instructions: int = 0
    spills: int = 0           # LDL/STL anywhere
    loop_spills: int = 0      # LDL/STL inside a step loop
    hmma: int = 0
    loop_hmma: int = 0
    barriers: int = 0
    step_loops: int = 0
    threads: int = 0          # the block size the kernel is built for, where known
    mix: dict = field(default_factory=dict)  # opcode -> count (top 20)
    loop_mix: dict = field(default_factory=dict)  # opcode -> count in the step loops' bodies
    problems: list = field(default_factory=list)


def parse_resources(text: str) -> dict[str, dict[str, int]]:
    found, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            current = m.group(1)
            continue
        if current and "REG:" in line:
            found[current] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
            current = None
    return found


_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def parse_sass(text: str) -> dict[str, list[tuple[int, str]]]:
    """Function name -> [(address, instruction text)]."""
    functions, current = {}, None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = m.group(1)
            functions[current] = []
            continue
        if current:
            m = _INSTR.search(line)
            if m:
                functions[current].append((int(m.group(1), 16), m.group(2)))
    return functions


def opcode(text: str) -> str:
    text = re.sub(r"^@!?U?P\w+\s+", "", text)  # predicate
    return text.split()[0].split(".")[0] if text.split() else ""


def step_loops(instrs: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """[start, end] address ranges of the loops (backward branches) that hold an HMMA
    or a barrier: a kernel's per-step work."""
    loops = []
    for addr, text in instrs:
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            lo = int(m.group(1), 16)
            body = [t for a, t in instrs if lo <= a <= addr]
            if any(opcode(t) in ("HMMA", "BAR") for t in body):
                loops.append((lo, addr))
    return loops


def threads_of(name: str) -> int:
    """Block size of a kernel, from its template arguments where the name says it."""
    m = _CONFIG.search(name)
    if m:
        return 32 * int(m.group("warps"))
    if "gru_step" in name:
        return 256
    if "selftest" in name:
        return 1024 if "empty_kernel" in name else 128
    return 0


def analyse(lib: Path, arch: str, tool: str) -> list[Kernel]:
    res = subprocess.run([tool, "-res-usage", "-arch", arch, str(lib)], capture_output=True, text=True)
    sass = subprocess.run([tool, "-sass", "-arch", arch, str(lib)], capture_output=True, text=True)
    if res.returncode or sass.returncode:
        raise RuntimeError(f"cuobjdump failed for {arch}: {res.stderr or sass.stderr}".strip())
    resources, functions = parse_resources(res.stdout), parse_sass(sass.stdout)
    names = demangle(sorted(functions))
    kernels = []
    for mangled, instrs in sorted(functions.items()):
        k = Kernel(name=names.get(mangled, mangled), mangled=mangled)
        r = resources.get(mangled, {})
        k.registers, k.shared, k.stack, k.local = (r.get("REG", 0), r.get("SHARED", 0),
                                                   r.get("STACK", 0), r.get("LOCAL", 0))
        ops = [opcode(t) for _, t in instrs]
        k.instructions = len(ops)
        k.spills = sum(o in ("LDL", "STL") for o in ops)
        k.hmma = ops.count("HMMA")
        k.barriers = ops.count("BAR")
        loops = step_loops(instrs)
        k.step_loops = len(loops)
        in_loop = [opcode(t) for a, t in instrs if any(lo <= a <= hi for lo, hi in loops)]
        k.loop_spills = sum(o in ("LDL", "STL") for o in in_loop)
        k.loop_hmma = in_loop.count("HMMA")
        k.loop_mix = dict(collections.Counter(o for o in in_loop if o).most_common())
        k.mix = dict(collections.Counter(o for o in ops if o).most_common(20))
        k.threads = threads_of(k.name)
        k.problems = rules(k, arch)
        kernels.append(k)
    return kernels


def cluster_of(name: str) -> int:
    m = _CONFIG.search(name)
    return int(m.group("cluster")) if m else 1


def rules(k: Kernel, arch: str = "sm_90") -> list[str]:
    problems = []
    persistent = "gru_forward" in k.name or "gru_backward" in k.name
    if persistent and cluster_of(k.name) > 1 and arch == "sm_80":
        # Clusters need sm_90: on sm_80 the kernel is a trap alone (gru_persistent.cuh),
        # never launched (the plan); a body compiled there only costs build time.
        if k.spills:
            problems.append(f"{k.spills} LDL/STL")
        if k.hmma or k.step_loops:
            problems.append("a cluster kernel compiled with its body for sm_80, where it never runs")
    elif persistent:
        if k.loop_spills:
            problems.append(f"{k.loop_spills} LDL/STL in a step loop")
        if not k.loop_hmma:
            problems.append("no HMMA in the step loop")
    elif k.spills:
        problems.append(f"{k.spills} LDL/STL (spills) in a kernel meant to be spill-free")
    if k.registers > 255:
        problems.append(f"{k.registers} registers > 255")
    if k.threads and k.registers * k.threads > REGS_PER_SM:
        problems.append(f"{k.registers} registers x {k.threads} threads > {REGS_PER_SM}: not one CTA an SM")
    return problems


# An H100 SXM's per-SM rates, for the per-step estimate (assumptions, not
# measurements): 4 schedulers issuing one warp instruction a cycle each; mma.sync at
# an A100's dense rate, 2048 FLOP/clk (one m16n8k16, or two m16n8k8.tf32, per 2 clk
# per SM; wgmma is faster, mma.sync is not); 16 special-function lanes (MUFU); shared
# memory 128 B/clk; ~33 clk of HMMA latency; ~40 clk per __syncthreads round trip.
H100 = {"clock_ghz": 1.755, "issue_per_clk": 4, "hmma_clk": 2.0, "mufu_clk": 2.0,
        "smem_bytes_per_clk": 128, "hmma_latency": 33, "barrier_clk": 40}
_SMEM_BYTES = {"LDSM": 512, "LDS": 128, "STS": 128}  # per warp instruction (upper bounds)


def step_estimate(k: Kernel, kt: int, gpu: dict = H100) -> dict:
    """Per-step cost of one CTA of a persistent kernel, from the static counts of its
    step loop (every branch of the body counted once: an upper bound). kt: the k-tiles
    one accumulator chains through per GEMM."""
    warps = k.threads // 32
    m = k.loop_mix
    issue = sum(m.values()) * warps / gpu["issue_per_clk"]
    tensor = m.get("HMMA", 0) * warps * gpu["hmma_clk"]
    mufu = m.get("MUFU", 0) * warps * gpu["mufu_clk"]
    smem = sum(m.get(o, 0) * b for o, b in _SMEM_BYTES.items()) * warps / gpu["smem_bytes_per_clk"]
    chain = kt * gpu["hmma_latency"]
    barriers = m.get("BAR", 0) * gpu["barrier_clk"]
    cycles = max(issue, tensor, mufu, smem, chain) + barriers
    return {"issue_clk": round(issue), "tensor_clk": round(tensor), "mufu_clk": round(mufu),
            "smem_clk": round(smem), "chain_clk": round(chain), "barrier_clk": barriers,
            "cycles": round(cycles), "us_per_step": round(cycles / (gpu["clock_ghz"] * 1e3), 3)}


# gru::Config<T, Op, Cell, HP, warps, register k-tiles, backward, cluster, keep_prev>
# (csrc/device/gru_persistent.cuh), as c++filt writes it.
_CONFIG = re.compile(r"Config<(?:gt::\w+::)?(?P<storage>\w+), (?:gt::\w+::)?gru::Op(?P<op>\w+), "
                     r"(?:gt::\w+::)?gru::(?P<cell>\w+(?:<(?:true|false)>)?), (?P<hp>\d+), "
                     r"(?P<warps>\d+), (?P<reg>\d+), (?P<backward>true|false), (?P<cluster>\d+), "
                     r"(?:true|false)>")
# The cell policies (csrc/device/cells.cuh): name in the table, gates.
CELLS = {"GruAfter": ("GRU after", 3), "GruBefore": ("GRU before", 3), "Rnn<false>": ("RNN tanh", 1),
         "Rnn<true>": ("RNN relu", 1), "Lstm": ("LSTM", 4)}


def estimates(kernels: list[Kernel]) -> list[dict]:
    """The per-step estimate of every persistent kernel."""
    rows = []
    for k in kernels:
        m = _CONFIG.search(k.name)
        if not m or not k.loop_mix:
            continue
        op, hp, backward = m.group("op"), int(m.group("hp")), m.group("backward") == "true"
        cell, gates = CELLS.get(m.group("cell"), (m.group("cell"), 3))
        kk = 8 if op == "TF32" else 16
        kt = (gates * hp if backward else hp) // kk
        rows.append({"pass": "backward" if backward else "forward", "operands": op.lower(),
                     "HP": hp, "cell": cell, "warps": int(m.group("warps")),
                     "cluster": int(m.group("cluster")),
                     "w_reg_ktiles": f"{m.group('reg')}/{kt}", **step_estimate(k, kt)})
    return rows


def report(lib: Path, tool: str) -> dict[str, list[Kernel]]:
    return {arch: analyse(lib, arch, tool) for arch in ARCHS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", type=Path, help="the compiled library (default: gru_torch._C)")
    ap.add_argument("--check", action="store_true", help="check the rules only; write nothing")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--estimate", action="store_true",
                    help="print the per-step cost estimate of the persistent kernels (sm_90, an H100)")
    args = ap.parse_args(argv)
    tool = find_cuobjdump()
    if tool is None:
        print("error: cuobjdump not found (CUDA toolkit, or triton's bundled copy)", file=sys.stderr)
        return 2
    lib = args.lib or find_library()
    results = report(lib, tool)
    failed = 0
    for arch, kernels in results.items():
        if not kernels:
            print(f"error: no {arch} code in {lib} (built without the CUDA sources?)", file=sys.stderr)
            return 2
        print(f"{arch}: {len(kernels)} kernels")
        for k in kernels:
            short = re.sub(r"gt::(cuda|emulated)::", "", k.name)[:110]
            flag = "FAIL " + "; ".join(k.problems) if k.problems else "ok"
            print(f"  {k.registers:3d} regs {k.shared + k.stack:6d} B smem+stack  spills {k.spills:3d} "
                  f"(loop {k.loop_spills})  HMMA {k.hmma:4d} (loop {k.loop_hmma:3d})  {short}  {flag}")
            failed += bool(k.problems)
        if not args.check:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            path = args.out_dir / f"sass-{arch}.json"
            payload = {"arch": arch, "library": lib.name, "kernels": [asdict(k) for k in kernels]}
            if arch == "sm_90":
                payload["h100_step_estimate"] = {"assumptions": H100, "rows": estimates(kernels)}
            path.write_text(json.dumps(payload, indent=1) + "\n")
            print(f"  wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if args.estimate:
        rows = estimates(results["sm_90"])
        keys = list(rows[0]) if rows else []
        print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    if failed:
        print(f"{failed} kernel(s) break the codegen rules", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
