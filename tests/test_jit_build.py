"""The JIT build path of gru_torch._ext, in subprocesses with their own build folders."""
import os
import subprocess
import sys

import pytest

from gru_torch import _build

pytestmark = pytest.mark.skipif(_build.csrc_dir() is None, reason="C++ sources not present")

SCRIPT = """
import warnings, torch, gru_torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    st = gru_torch.extension_status()
    gru = gru_torch.GRU(3, 4, dtype=torch.float64)
    out, h = gru(torch.randn(5, 2, 3, dtype=torch.float64))
ref = gru_torch.GRU(3, 4, dtype=torch.float64, backend="reference")
ref.load_state_dict(gru.state_dict())
out_ref, _ = ref(torch.randn(5, 2, 3, dtype=torch.float64))
print("STATUS", st.loaded, st.how)
print("WARN", any("falling back" in str(w.message) for w in caught))
"""


def run(tmp_path, **env):
    full = {**os.environ, "GRU_TORCH_JIT": "1", "TORCH_EXTENSIONS_DIR": str(tmp_path), **env}
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=full, timeout=900)


def test_jit_build_loads_the_ops(tmp_path):
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "STATUS True jit" in proc.stdout, proc.stdout
    assert "WARN False" in proc.stdout


def test_failed_jit_build_still_imports_and_falls_back(tmp_path):
    proc = run(tmp_path, CXX="/bin/false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "STATUS False none" in proc.stdout, proc.stdout
    assert "WARN True" in proc.stdout, proc.stdout
