"""scripts/time_layer.py: the per-pass timing loop the CPU op's changes are measured with."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gru_torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "time_layer.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(not gru_torch.extension_status().loaded, reason="needs the fused op")
def test_medians_by_pass():
    proc = run("--shape", "6,9,3,5", "--repeats", "3", "--warmup", "1", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "B,T,I,H = 6,9,3,5; 1 thread(s)" in proc.stdout
    found = dict(re.findall(r"(f|ft|fb|bwd) (-?[\d.]+)", proc.stdout.splitlines()[-1]))
    assert set(found) == {"f", "ft", "fb", "bwd"}
    assert float(found["f"]) > 0 and float(found["fb"]) > 0
    assert float(found["bwd"]) == pytest.approx(float(found["fb"]) - float(found["ft"]), abs=0.11)


@pytest.mark.skipif(not gru_torch.extension_status().loaded, reason="needs the fused op")
def test_per_call_lists_every_call():
    proc = run("--shape", "6,9,3,5", "--repeats", "4", "--warmup", "0", "--per-call")
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(": ") for line in proc.stdout.splitlines()[1:])
    assert len(lines["forward ms"].split()) == 4 and len(lines["backward ms"].split()) == 4


def test_bad_shape_is_one_line():
    proc = run("--shape", "6,9,x")
    assert proc.returncode == 2
    assert "a shape is four positive ints B,T,I,H, got '6,9,x'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not gru_torch.extension_status().loaded, reason="needs the fused op")
def test_final_loss_reads_h_n_alone():
    proc = run("--shape", "6,9,3,5", "--repeats", "2", "--warmup", "0", "--loss", "final")
    assert proc.returncode == 0, proc.stderr
    assert "loss h_n.sum() / B" in proc.stdout.splitlines()[0]
    assert re.search(r"fb [\d.]+", proc.stdout.splitlines()[-1])
