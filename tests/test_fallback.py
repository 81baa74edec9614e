"""The fallback chain: "auto" picks the fused op, else nn.GRU, else the reference loop,
warning once with the reason; a forced backend that cannot run says why."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import gru_torch
from conftest import assert_close

I, H, T, B = 3, 5, 6, 2

# Runs in a fresh interpreter with the extension hidden; prints one JSON line.
_SCRIPT = textwrap.dedent(r"""
    import dataclasses, json, sys, warnings
    import torch
    from torch import nn
    import gru_torch
    import gru_torch.backends as backends

    picked = []
    _resolve = backends.resolve
    def recording_resolve(requested, cfg):
        result = _resolve(requested, cfg)
        picked.append(result)
        return result
    backends.resolve = recording_resolve

    reset_after = sys.argv[1] == "True"
    result = {"status": dataclasses.asdict(gru_torch.extension_status())}
    torch.manual_seed(0)
    x = torch.randn(%(T)d, %(B)d, %(I)d, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gru = gru_torch.GRU(%(I)d, %(H)d, dtype=torch.float64, reset_after=reset_after,
                            backend="auto")
        out1, h1 = gru(x)
        out2, h2 = gru(x)
    result["picked"] = list(picked)
    result["warnings"] = [str(w.message) for w in caught]
    result["warning_categories"] = [w.category.__name__ for w in caught]
    result["repeat_equal"] = bool(torch.equal(out1, out2) and torch.equal(h1, h2))
    if reset_after:
        ref = gru.to_torch()
        out_r, h_r = ref(x)
        result["max_diff_vs_nn_gru"] = max((out1 - out_r).abs().max().item(),
                                           (h1 - h_r).abs().max().item())
    else:
        ref = gru_torch.GRU(%(I)d, %(H)d, dtype=torch.float64, reset_after=False,
                            backend="reference")
        ref.load_state_dict(gru.state_dict())
        out_r, h_r = ref(x)
        result["max_diff_vs_reference"] = max((out1 - out_r).abs().max().item(),
                                              (h1 - h_r).abs().max().item())
    try:
        gru_torch.GRU(%(I)d, %(H)d, dtype=torch.float64, backend="fused")(x)
        result["fused_error"] = None
    except RuntimeError as e:
        result["fused_error"] = str(e)
    print("RESULT " + json.dumps(result))
""" % {"I": I, "H": H, "T": T, "B": B})


def _run_hidden(reset_after: bool) -> dict:
    env = dict(os.environ, GRU_TORCH_DISABLE_EXT="1", PYTHONWARNINGS="default")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(reset_after)], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0][len("RESULT "):])


@pytest.fixture(scope="module")
def hidden_reset_after_true():
    return _run_hidden(True)


@pytest.fixture(scope="module")
def hidden_reset_after_false():
    return _run_hidden(False)


def test_hidden_extension_reports_not_loaded(hidden_reset_after_true):
    st = hidden_reset_after_true["status"]
    assert st["loaded"] is False
    assert "GRU_TORCH_DISABLE_EXT" in st["reason"]


def test_hidden_auto_picks_nn_gru_for_reset_after_true(hidden_reset_after_true):
    r = hidden_reset_after_true
    assert r["picked"] == ["cudnn", "cudnn"]
    gru_msgs = [m for m in r["warnings"] if "gru_torch" in m]
    assert len(gru_msgs) == 1, r["warnings"]  # once, though forward ran twice
    assert "not built" in gru_msgs[0]
    assert "nn.GRU" in gru_msgs[0]
    assert "UserWarning" in r["warning_categories"]
    assert r["repeat_equal"]
    assert r["max_diff_vs_nn_gru"] < 1e-12


def test_hidden_auto_picks_reference_for_reset_after_false(hidden_reset_after_false):
    r = hidden_reset_after_false
    assert r["picked"] == ["reference", "reference"]
    gru_msgs = [m for m in r["warnings"] if "gru_torch" in m]
    assert len(gru_msgs) == 1, r["warnings"]
    assert "reference" in gru_msgs[0]
    assert "not built" in gru_msgs[0]
    assert "reset_after" in gru_msgs[0]
    assert r["repeat_equal"]
    assert r["max_diff_vs_reference"] == 0.0


@pytest.mark.parametrize("which", ["hidden_reset_after_true", "hidden_reset_after_false"])
def test_hidden_forced_fused_says_how_to_build(which, request):
    err = request.getfixturevalue(which)["fused_error"]
    assert err is not None, "backend='fused' ran although the extension is hidden"
    assert "pip install" in err
    assert "not built" in err


# ------------------------------------------------------------------ in-process
FUSED = gru_torch.extension_status().loaded


@pytest.mark.skipif(not FUSED, reason="the fused extension is not loaded in this process")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reset_after", [True, False])
def test_auto_picks_fused_on_cpu(dtype, reset_after, clear_warned, record_backend, gru_warnings):
    gru = gru_torch.GRU(I, H, dtype=dtype, reset_after=reset_after)
    gru(torch.randn(T, B, I, dtype=dtype))
    assert record_backend.last == "fused"
    assert gru_warnings() == []


@pytest.mark.skipif(not FUSED, reason="the fused extension is not loaded in this process")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_auto_half_precision_on_cpu_falls_back_to_nn_gru(dtype, clear_warned, record_backend):
    torch.manual_seed(5)
    ref = nn.GRU(I, H, dtype=dtype)
    gru = gru_torch.GRU.from_torch(ref)
    x = torch.randn(T, B, I, dtype=dtype)
    name = str(dtype).replace("torch.", "")
    with pytest.warns(UserWarning, match=name) as rec:
        out, h_n = gru(x)
    assert record_backend.last == "cudnn"
    assert any("nn.GRU" in str(w.message) for w in rec)
    out_r, h_r = ref(x)
    assert_close(out.detach(), out_r.detach(), atol=0, what="output")
    assert_close(h_n.detach(), h_r.detach(), atol=0, what="h_n")


@pytest.mark.skipif(not FUSED, reason="the fused extension is not loaded in this process")
def test_fallback_warns_once_per_reason(clear_warned, record_backend, gru_warnings):
    gru = gru_torch.GRU(I, H, dtype=torch.bfloat16)
    x = torch.randn(T, B, I, dtype=torch.bfloat16)
    gru(x)
    gru(x)
    assert len(gru_warnings()) == 1
    # a different reason warns again
    gru_torch.GRU(I, H, dtype=torch.float16)(x.to(torch.float16))
    assert len(gru_warnings()) == 2
    assert [c[1] for c in record_backend.calls] == ["cudnn"] * 3


@pytest.mark.skipif(not FUSED, reason="the fused extension is not loaded in this process")
def test_forced_fused_with_unsupported_dtype_says_why():
    gru = gru_torch.GRU(I, H, dtype=torch.bfloat16, backend="fused")
    with pytest.raises(RuntimeError, match="bfloat16"):
        gru(torch.randn(T, B, I, dtype=torch.bfloat16))


def test_forced_backends_do_not_warn(clear_warned, record_backend, gru_warnings):
    for backend in ("reference", "cudnn"):
        gru = gru_torch.GRU(I, H, dtype=torch.float64, backend=backend)
        gru(torch.randn(T, B, I, dtype=torch.float64))
        assert record_backend.last == backend
    assert gru_warnings() == []
