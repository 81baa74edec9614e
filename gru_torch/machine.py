"""The machine a run shares: physical cores, and whether other work keeps them busy.

torch's CPU kernels split each op over its threads and wait for the slowest, and OpenMP's
waiting threads spin, so a thread that shares its core with another process stalls every
op: on a busy 2-core machine an epoch ran 10 to 60 times slower with 2 threads than with 1,
and as fast as with 1 when OMP_WAIT_POLICY=PASSIVE made the waiting threads sleep.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads counted once)."""
    allowed = _allowed_cpus()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return max(1, len(allowed))
    cores = set()
    for block in text.split("\n\n"):
        fields = dict((k.strip(), v.strip()) for k, _, v in
                      (line.partition(":") for line in block.splitlines()))
        if "processor" not in fields or int(fields["processor"]) not in allowed:
            continue
        cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
    return max(1, min(len(cores) or len(allowed), len(allowed)))


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), named beside every timing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


BALLOON = Path("/sys/bus/virtio/drivers/virtio_balloon")


def returns_free_memory(balloon: Path = BALLOON) -> bool:
    """Whether this (virtual) machine's kernel hands freed memory back to its host: a
    virtio balloon that negotiated free page reporting (feature bit 5), whose host then
    discards the pages, so that touching them again costs a fault on the host, which
    memory the guest kept does not.
    Buffers mapped fresh for every call, as the fused op's are with its pool off
    (GRU_TORCH_CPU_POOL_MB=0), pay it some of the time; timings say so beside them."""
    try:
        for features in balloon.glob("virtio*/features"):
            bits = features.read_text().strip()
            if len(bits) > 5 and bits[5] == "1":  # VIRTIO_BALLOON_F_REPORTING
                return True
    except OSError:
        pass
    return False


def load_average() -> float | None:
    """The 1-minute load average, or None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_note(threads: int) -> str | None:
    """One line suggesting fewer threads when the load average says other processes hold
    the cores `threads` would use; None when the machine looks free enough."""
    load = load_average()
    cpus = len(_allowed_cpus())
    if load is None or load < 1 or threads <= max(cpus - load, 0) + 0.5:
        return None
    suggest = max(1, int(cpus - load))
    if suggest >= threads:
        return None
    return (f"the machine is busy (load average {load:.1f} on {cpus} CPUs): {threads} threads "
            f"may run many times slower than fewer; try --threads {suggest} (in Python: "
            f"torch.set_num_threads({suggest})), or OMP_WAIT_POLICY=PASSIVE in the environment")
