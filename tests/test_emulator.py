"""The CUDA emulator's self-tests: tensor-core fragment layouts, ldmatrix, warp
collectives, cp.async and a clean kernel (each also on a real GPU where one is
present), then one small kernel per bug class the emulator must report."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import gru_torch
from gru_torch import testing

pytestmark = pytest.mark.skipif(not gru_torch.extension_status().loaded,
                                reason="gru_torch extension not built")



def device_of(kind: str) -> torch.device:
    return torch.device("cpu" if kind == "emulated" else "cuda")


def run(kind: str, name: str, buffers: list[torch.Tensor], ints: list[int]) -> None:
    testing.run_device_selftest(name, buffers, ints)
    if kind == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- tensor cores
def _bits16(t: torch.Tensor) -> torch.Tensor:
    """A [R, K] bf16/f16 matrix as [R, K/2] int32 words, two values per word along K."""
    return t.contiguous().view(torch.int16).view(torch.int32)


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """Rounds float32 to tf32 as cvt.rna.tf32.f32 does (nearest, ties away from zero)."""
    bits = t.view(torch.int32)
    finite = (bits & 0x7F800000) != 0x7F800000
    rounded = ((bits + 0x1000) & ~0x1FFF)
    return torch.where(finite, rounded, bits).view(torch.float32)


MMA_KINDS = {"mma_bf16": torch.bfloat16, "mma_f16": torch.float16, "mma_tf32": torch.float32}


def _mma_case(name: str, K: int, N: int, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    dtype = MMA_KINDS[name]
    A = (torch.rand(16, K, generator=g) * 2 - 1).to(dtype)
    B = (torch.rand(K, N, generator=g) * 2 - 1).to(dtype)
    if dtype == torch.float32:
        a_buf, bt_buf = A.view(torch.int32), B.t().contiguous().view(torch.int32)
        ref = _tf32(A).double() @ _tf32(B).double()
    else:
        a_buf, bt_buf = _bits16(A), _bits16(B.t())
        ref = A.double() @ B.double()
    D = torch.full((16, N), float("nan"))
    return [a_buf.to(device), bt_buf.to(device), D.to(device)], ref


@pytest.mark.parametrize("name", list(MMA_KINDS))
def test_mma_fragments_match_a_plain_gemm(kind, name):
    """mma.sync with the PTX fragment layout, inputs rounded as the hardware type
    rounds them and fp32 accumulation: equal to a float64 GEMM of the rounded
    inputs up to fp32 summation error."""
    K, N = 64, 32
    bufs, ref = _mma_case(name, K, N, device_of(kind), seed=1)
    run(kind, name, bufs, [K, N, 0])
    D = bufs[2].cpu().double()
    assert torch.isfinite(D).all(), "every output element must be written"
    torch.testing.assert_close(D, ref, atol=2e-5 * K ** 0.5, rtol=1e-6)


@pytest.mark.parametrize("name", list(MMA_KINDS))
def test_mma_swapped_register_is_caught(kind, name):
    """Swapping two A registers (a layout bug) must give a result far from the GEMM."""
    K, N = 64, 32
    bufs, ref = _mma_case(name, K, N, device_of(kind), seed=2)
    run(kind, name, bufs, [K, N, 1])
    err = (bufs[2].cpu().double() - ref).abs().max().item()
    assert err > 0.5, f"the swapped fragment went unnoticed (max error {err})"


def test_tf32_operands_are_rounded():
    """Operands with low mantissa bits set give the product of their tf32 roundings, not
    of the fp32 values: the emulated tensor core reads tf32."""
    K, N = 8, 8
    A = torch.full((16, K), 1.0 + 2 ** -20)  # below tf32's resolution: rounds to 1
    B = torch.full((K, N), 1.0 + 2 ** -11)   # half a tf32 ulp: ties round away, to 1 + 2^-10
    D = torch.full((16, N), float("nan"))
    run("emulated", "mma_tf32", [A.view(torch.int32), B.t().contiguous().view(torch.int32), D],
        [K, N, 0])
    assert torch.equal(D, torch.full((16, N), K * (1.0 + 2 ** -10)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("trans", [False, True], ids=["rows", "trans"])
def test_ldmatrix_fragments(kind, dtype, trans):
    """A GEMM whose fragments come through ldmatrix (.x4 for A, .x2 or .x2.trans for B)."""
    K, N = 32, 24
    g = torch.Generator().manual_seed(3)
    A = (torch.rand(16, K, generator=g) * 2 - 1).to(dtype)
    B = (torch.rand(K, N, generator=g) * 2 - 1).to(dtype)
    src = B if trans else B.t().contiguous()
    dev = device_of(kind)
    D = torch.full((16, N), float("nan"), device=dev)
    name = f"ldmatrix_{'bf16' if dtype == torch.bfloat16 else 'f16'}{'_trans' if trans else ''}"
    run(kind, name, [A.view(torch.int16).to(dev), src.view(torch.int16).to(dev), D], [K, N])
    torch.testing.assert_close(D.cpu().double(), A.double() @ B.double(), atol=1e-4, rtol=1e-6)


# ---------------------------------------------------------------- warp collectives
def _expected_warp_ops(threads: int, half: bool) -> torch.Tensor:
    rows = []
    for tid in range(threads):
        lane = tid % 32
        width = 16 if half else 32
        base = tid - lane + (lane // width) * width if half else tid - lane
        group = range(base, base + width)

        def v(t):
            return t * 3 + 1

        def seg_src(src, w):  # a source index within this lane's width-w segment
            return tid - (lane % w) + src

        up = tid - 3 if (lane % width) >= 3 else tid
        down = tid + 5 if (lane % width) + 5 < width else tid
        xor9 = tid - lane + (lane ^ (9 % width))
        xor2 = tid - lane + ((lane ^ 2) if ((lane ^ 2) // 8) == lane // 8 else lane)
        ballot = sum(1 << (t % 32) for t in group if (t % 32) % 3 == 0)
        ballot = ballot - (1 << 32) if ballot >= 2 ** 31 else ballot
        rows.append([v(seg_src((lane * 7 + 3) % width, width)), v(up), v(down), v(xor9), v(xor2),
                     ballot, int(any(t % 32 == 7 for t in group)), 1,
                     int(all(t % 32 != 20 for t in group)), v(tid ^ 1)])
    return torch.tensor(rows, dtype=torch.int32)


@pytest.mark.parametrize("half", [False, True], ids=["full-mask", "two-half-warps"])
def test_shuffles_and_votes(kind, half):
    """__shfl_sync / up / down / xor (widths 32, 16, 8), ballot, any and all, with the
    full mask and with each half-warp on its own 16-lane mask at the same time."""
    out = torch.full((128, 10), -999, dtype=torch.int32, device=device_of(kind))
    run(kind, "warp_ops", [out], [int(half)])
    assert torch.equal(out.cpu(), _expected_warp_ops(128, half))


def test_cp_async_with_zero_fill(kind):
    n, zfill_from = 256, 40  # chunks of 4 floats from chunk 40 on are zero-filled
    dev = device_of(kind)
    src = torch.arange(n, dtype=torch.float32, device=dev) + 1
    dst = torch.full((n,), float("nan"), device=dev)
    run(kind, "cp_async", [src, dst], [n, zfill_from])
    expected = torch.where(torch.arange(n) < 4 * zfill_from, src.cpu(), torch.zeros(n))
    assert torch.equal(dst.cpu(), expected)


def test_clean_kernel_passes_the_race_checker(kind):
    """A block reduction with shuffles, a __syncwarp-ordered exchange through shared
    memory and a __syncthreads stage: correct, and no race, bounds or init report."""
    blocks = 5
    dev = device_of(kind)
    x = torch.randn(blocks * 128, generator=torch.Generator().manual_seed(4)).to(dev)
    out = torch.full((blocks,), float("nan"), device=dev)
    with testing.emulate_cuda(race_check=True, init_check=True):
        run(kind, "block_sum", [x, out], [blocks])
    torch.testing.assert_close(out.cpu().double(), x.cpu().double().view(blocks, 128).sum(1),
                               atol=1e-4, rtol=1e-6)


def test_shared_memory_atomics(kind):
    """Every thread atomically adds 1 to a shared bin: atomics do not race with each
    other, and the counts are exact."""
    out = torch.full((8,), float("nan"), device=device_of(kind))
    run(kind, "shared_atomics", [out], [0])
    assert torch.equal(out.cpu(), torch.full((8,), 128 / 8))


def test_plain_read_after_atomics_without_a_barrier_is_a_race():
    """Bins read with a plain load while other threads' atomics still land: whichever
    comes first, the pair is reported."""
    _bug("shared_atomics", testing.RaceError, "races with (an atomic update|a read)",
         buffers=[torch.zeros(8)], ints=[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_kernel_is_order_independent(seed):
    x = torch.randn(3 * 128, generator=torch.Generator().manual_seed(5))
    outs = []
    for shuffle in (None, seed):
        out = torch.full((3,), float("nan"))
        with testing.emulate_cuda(shuffle_seed=shuffle):
            run("emulated", "block_sum", [x, out], [3])
        outs.append(out)
    assert torch.equal(outs[0], outs[1])


# ---------------------------------------------------------------- bug classes
def _bug(name, error, match, buffers=None, ints=(), **settings):
    buffers = buffers if buffers is not None else [torch.zeros(128)]
    with pytest.raises(error, match=match) as info:
        with testing.emulate_cuda(**settings):
            testing.run_device_selftest(name, buffers, list(ints))
    message = str(info.value)
    assert "block (0,0,0)" in message, message
    return message


def test_missing_syncthreads_is_a_race():
    message = _bug("missing_syncthreads", testing.RaceError, "races with a read")
    assert "offset 0x" in message and "thread (" in message


def test_divergent_barrier_is_reported():
    _bug("divergent_barrier", testing.BarrierError, "different __syncthreads")


def test_deadlock_is_reported_not_hung():
    message = _bug("deadlock", testing.DeadlockError, "no thread can make progress")
    assert "97 threads wait in __syncthreads" in message
    assert "31 threads wait in a warp collective" in message


def test_shuffle_after_exit_is_reported():
    _bug("shfl_after_exit", testing.WarpSyncError, "exited")


def test_lanes_disagreeing_on_the_collective_are_reported():
    _bug("lanes_disagree", testing.WarpSyncError, "disagree")


def test_shared_memory_out_of_bounds():
    message = _bug("smem_out_of_bounds", testing.SharedMemoryBoundsError, "outside its allocation")
    assert "offset 0x100" in message  # float 64 of a 64-float array


def test_global_memory_out_of_bounds():
    _bug("gmem_out_of_bounds", testing.GlobalMemoryBoundsError, "outside its tensor",
         buffers=[torch.zeros(128), torch.zeros(128)], ints=[64])


def test_uninitialized_shared_read():
    _bug("uninit_read", testing.UninitializedReadError, "nothing wrote")


def test_race_check_off_lets_the_order_show():
    """With the race checker off, the racy kernel's result depends on the order the
    threads run in: seeded shuffles give results that differ from the plain order."""
    def result(seed):
        out = torch.full((128,), float("nan"))
        with testing.emulate_cuda(race_check=False, shuffle_seed=seed):
            testing.run_device_selftest("missing_syncthreads", [out], [])
        return out

    plain = result(None)
    shuffled = [result(s) for s in range(3)]
    assert any(not torch.equal(plain, s) for s in shuffled)
    assert torch.equal(result(7), result(7)), "a seed must give the same order every time"


# ---------------------------------------------------------------- cp.async, .aligned, clusters
# What the GPU leaves undefined and a CPU run would not show: each planted bug below
# gives the right numbers in the emulator, so only the check can tell.
def _cp_async_case(kind: str, bug: int):
    dev = device_of(kind)
    first = torch.arange(4 * 128, dtype=torch.float32) + 1
    src, dst = first.clone().to(dev), torch.full((4 * 128,), float("nan"), device=dev)
    return first, [src, dst], [bug]


def test_cp_async_destination_read_and_source_overwritten_after_the_wait(kind):
    """Each thread reads its neighbour's cp.async destination only after the wait and a
    barrier, and overwrites its source only after the wait: correct, and not reported."""
    first, bufs, ints = _cp_async_case(kind, 0)
    run(kind, "cp_async_hazard", bufs, ints)
    assert torch.equal(bufs[1].cpu(), first.view(128, 4).roll(-1, 0).flatten())
    assert torch.equal(bufs[0].cpu(), -first)


@pytest.mark.parametrize("bug,access", [(1, "read"), (2, "read"), (3, "write")],
                         ids=["own-read", "read-after-barrier", "write-after-barrier"])
def test_cp_async_destination_before_the_wait_is_a_race(bug, access):
    """The copy may land at any time from its issue to its wait: an access to the
    destination in between, by the issuing thread or by another after a barrier, races."""
    _, bufs, ints = _cp_async_case("emulated", bug)
    message = _bug("cp_async_hazard", testing.RaceError,
                   f"shared-memory {access} .* races with a cp.async by thread .* still in flight",
                   buffers=bufs, ints=ints)
    issuer, accessor = re.search(r"by thread (\(\d+,0,0\)) .*\[block \(0,0,0\) thread (\(\d+,0,0\))\]",
                                 message).groups()
    assert (issuer == accessor) == (bug == 1), message  # bug 1: the issuing thread itself


def test_cp_async_source_overwritten_before_the_wait_is_a_race():
    """The copy may read its global source at any time until it completes."""
    _, bufs, ints = _cp_async_case("emulated", 4)
    _bug("cp_async_hazard", testing.RaceError,
         "global source of a cp.async .* changed between its issue and the cp_async_wait",
         buffers=bufs, ints=ints)


def test_aligned_ops_in_warp_uniform_branches(kind):
    """ldmatrix and mma in two branches that split the block by whole warps: correct."""
    out = torch.full((2, 16, 8), float("nan"), device=device_of(kind))
    run(kind, "aligned_call_sites", [out], [0])
    rows = 16 * torch.arange(16, dtype=torch.float32) + 7.5  # sum over k of r + k / 16
    assert torch.equal(out.cpu(), rows.view(1, 16, 1).expand(2, 16, 8))


@pytest.mark.parametrize("bug,op", [(1, "ldmatrix"), (2, "mma")])
def test_aligned_op_reached_from_two_call_sites_is_reported(bug, op):
    """.aligned: every lane of the warp must execute the same ldmatrix or mma
    instruction; half the lanes in each of two branches is undefined on a GPU."""
    message = _bug("aligned_call_sites", testing.WarpSyncError,
                   f"reach {op}[^ ]* from two call sites", buffers=[torch.zeros(2 * 16 * 8)],
                   ints=[bug])
    assert message.count("selftest_kernels.cuh:") == 2, message


def _remote_case(kind: str, bug: int):
    if kind == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("thread-block clusters need sm_90")
    dev = device_of(kind)
    src = torch.arange(64, dtype=torch.float32, device=dev) + 1
    return [src, torch.full((2, 96), float("nan"), device=dev)], [bug]


def test_distributed_shared_memory_with_plain_stores(kind):
    """Plain stores into the other block's shared memory (map_rank), then ldmatrix and
    cp.async on the block's own: correct."""
    bufs, ints = _remote_case(kind, 0)
    run(kind, "remote_shared", bufs, ints)
    lanes = torch.arange(32)
    tile = (lanes // 4).float().repeat_interleave(2)
    expected = torch.stack([torch.cat([tile, bufs[0].cpu()[32 * r:32 * r + 32]]) for r in (0, 1)])
    assert torch.equal(bufs[1].cpu(), expected)


@pytest.mark.parametrize("bug,op", [(1, "ldmatrix"), (2, "cp.async")])
def test_ldmatrix_and_cp_async_on_another_blocks_shared_memory_are_reported(bug, op):
    """ldmatrix reads, and cp.async writes, only the block's own shared memory
    (.shared::cta): a map_rank pointer names another block's."""
    bufs, ints = _remote_case("emulated", bug)
    _bug("remote_shared", testing.SharedMemoryBoundsError,
         rf"{re.escape(op)}\b.*another block's shared memory", buffers=bufs, ints=ints)


# ---------------------------------------------------------------- the nvcc side of port.cuh
CSRC = Path(__file__).resolve().parent.parent / "csrc"


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    path = Path(home) / "bin" / "nvcc"
    return str(path) if path.is_file() else shutil.which("nvcc")


@pytest.mark.skipif(_nvcc() is None, reason="no nvcc")
def test_cp_async_source_is_a_global_address(tmp_path):
    """cp.async.shared.global takes a .global address: port.cuh converts the generic
    pointer (cvta.to.global) rather than passing it as it is."""
    kernel = tmp_path / "cp_async.cu"
    kernel.write_text(
        '#include "device/port.cuh"\n'
        "__global__ void copy(const float* g, float* out) {\n"
        "  __shared__ __align__(16) float s[4];\n"
        "  gt::cp_async<16>(gt::sptr<float>(s), gt::gptr<const float>(g), true);\n"
        "  gt::cp_async_commit();\n"
        "  gt::cp_async_wait<0>();\n"
        "  out[threadIdx.x % 4] = s[threadIdx.x % 4];\n"
        "}\n")
    ptx = tmp_path / "cp_async.ptx"
    subprocess.run([_nvcc(), "-ptx", "-arch=sm_80", f"-I{CSRC}", str(kernel), "-o", str(ptx)],
                   check=True, capture_output=True, timeout=300)
    text = ptx.read_text()
    copy = re.search(r"cp\.async\.cg\.shared\.global \[%r\d+\], \[(%rd\d+)\]", text)
    assert copy, text
    assert re.search(rf"cvta\.to\.global\.u64\s+{copy.group(1)},", text), text


def test_cp_async_asm_carries_a_memory_clobber():
    """The inline PTX that issues and waits for cp.async tells the compiler it touches
    memory, so no shared-memory access is moved across it (NVIDIA's inline PTX guide:
    an asm with a memory operation needs the "memory" clobber). nvcc keeps asm volatile
    in place today with or without it, so the PTX cannot show it: this reads the source."""
    source = (CSRC / "device" / "port.cuh").read_text()
    statements = re.findall(r'asm volatile\((".*?);\n', source, flags=re.S)
    copies = [s for s in statements if "cp.async" in s and "commit_group" not in s]
    assert len(copies) == 3, copies  # cp.async.cg, cp.async.ca, cp.async.wait_group
    for s in copies:
        assert re.search(r':\s*"memory"\)\s*$', s), s


# ---------------------------------------------------------------- launch limits
@pytest.mark.parametrize("gpu", ["a100", "h100"])
def test_oversized_block_is_refused(gpu):
    _launch_refused(gpu, [2048, 0, 0, 1], "block dimension x = 2048 exceeds 1024")


@pytest.mark.parametrize("gpu,ok", [("h100", True), ("a100", False)])
def test_shared_memory_against_the_opt_in_limit(gpu, ok):
    ints = [256, 200 * 1024, 0, 1]  # 200 KiB fits an H100 (227 KiB), not an A100 (163 KiB)
    if ok:
        _launch(gpu, ints)
    else:
        _launch_refused(gpu, ints, "opt-in limit of 166912 bytes")


@pytest.mark.parametrize("gpu,sms", [("h100", 132), ("a100", 108)])
def test_cooperative_launch_co_residency(gpu, sms):
    """Blocks with 120 KiB of shared memory: one per SM on either GPU; a cooperative grid
    of one block per SM fits, one more does not."""
    _launch(gpu, [32, 120 * 1024, 1, sms])
    _launch_refused(gpu, [32, 120 * 1024, 1, sms + 1], "cooperative launch too large")


def test_co_residency_counts_registers():
    """1024-thread blocks whose __launch_bounds__ allow 64 registers a thread fill an SM's
    65536 registers: two such blocks cannot share an SM."""
    _launch_refused("h100", [1024, 0, 1, 133], "only 1 per SM x 132 SMs")


def _launch(gpu, ints):
    with testing.emulate_cuda(gpu=gpu):
        testing.run_device_selftest("launch", [torch.zeros(4, dtype=torch.int32)], ints)


def _launch_refused(gpu, ints, match):
    with pytest.raises(testing.LaunchError, match=match) as info:
        _launch(gpu, ints)
    assert gpu in str(info.value)


def test_emulate_cuda_checks_its_arguments():
    with pytest.raises(ValueError, match="gpu must be one of"):
        with testing.emulate_cuda(gpu="v100"):
            pass
    with pytest.raises(ValueError, match="shuffle_seed"):
        with testing.emulate_cuda(shuffle_seed=-1):
            pass
