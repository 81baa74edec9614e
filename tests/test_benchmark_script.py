"""scripts/benchmark.py: a tiny run end to end (GRU, LSTM, RNN), and its correctness check
failing loudly."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gru_torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def run_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_tiny_run_writes_json_and_markdown(tmp_path):
    out = tmp_path / "res" / "tiny.json"
    proc = run_script("--shapes", "3,5,2,4;2,4,3,3", "--repeats", "2", "--warmup", "0",
                      "--reference-repeats", "1", "--layers", "2", "--bidirectional",
                      "--dtype", "float32,bfloat16", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert {"device", "torch", "cudnn", "threads", "rows"} <= set(data)
    fused = gru_torch.extension_status().loaded
    assert ("check B=3 T=5 I=2 H=4: ok" in proc.stdout) == fused
    expected = {("fused", "float32")} if fused else set()
    expected |= {(b, d) for b in ("cudnn", "reference") for d in ("float32", "bfloat16")}
    for shape in ((3, 5, 2, 4), (2, 4, 3, 3)):
        rows = [r for r in data["rows"] if (r["B"], r["T"], r["I"], r["H"]) == shape]
        assert {(r["backend"], r["dtype"]) for r in rows} == expected
        assert {r["pass"] for r in rows} == {"forward", "forward+backward"}
        for r in rows:
            assert r["layers"] == 2 and r["bidirectional"] is True and r["median_ms"] > 0
            assert r["repeats"] == (1 if r["backend"] == "reference" else 2)
    markdown = out.with_suffix(".md").read_text()
    assert "| 3,5,2,4 | float32 | forward |" in markdown and "Napkin math" in markdown
    assert out.with_suffix(".png").stat().st_size > 1000, "the speedup plot beside the table"


def test_recurrent_dropout_times_training_without_nn_gru(tmp_path):
    out = tmp_path / "rd.json"
    proc = run_script("--shapes", "3,5,2,4", "--repeats", "1", "--warmup", "0",
                      "--recurrent-dropout", "0.3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(r["pass"] == "forward+backward" and r["backend"] != "cudnn" for r in rows)
    assert all(r["recurrent_dropout"] == 0.3 for r in rows)


def test_bad_shape_is_a_usage_error():
    proc = run_script("--shapes", "1,2,3", "--no-save")
    assert proc.returncode == 2 and "B,T,I,H" in proc.stderr


@pytest.fixture
def bench(monkeypatch):
    """scripts/benchmark.py as a module."""
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_results_go_to_runs_unless_recorded(bench):
    cpu = torch.device("cpu")
    assert bench.default_out(cpu, "AMD EPYC 7763 64-Core Processor") == \
        bench.RUNS_DIR / "cpu-amd-epyc-7763.json"
    assert bench.default_out(cpu, "AMD EPYC 7763", record=True).parent == bench.RESULTS_DIR
    assert bench.RUNS_DIR.parts[-2:] == ("runs", "bench")


def test_other_cells_put_the_cell_in_their_file_names(bench):
    cpu = torch.device("cpu")
    name = "AMD EPYC 7763 64-Core Processor"
    assert bench.default_out(cpu, name, cell="gru") == bench.RUNS_DIR / "cpu-amd-epyc-7763.json"
    assert bench.default_out(cpu, name, cell="lstm") == bench.RUNS_DIR / "cpu-amd-epyc-7763-lstm.json"
    assert bench.default_out(cpu, name, record=True, cell="rnn_relu") == \
        bench.RESULTS_DIR / "cpu-amd-epyc-7763-rnn-relu.json"


def test_record_refuses_on_a_busy_machine(bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench.machine, "load_average", lambda: 1.7)
    out = tmp_path / "rec.json"
    args = ["--shapes", "2,3,2,2", "--repeats", "1", "--warmup", "0", "--backends", "cudnn",
            "--record", "--out", str(out)]
    assert bench.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: not recording: the 1-minute load average is 1.70") and "--force" in err
    assert not out.exists()
    assert bench.main(args + ["--force"]) == 0
    assert "recording anyway" in capsys.readouterr().err and out.is_file()
    monkeypatch.setattr(bench.machine, "load_average", lambda: 0.1)
    out.unlink()
    assert bench.main(args) == 0 and out.is_file()


def test_free_page_reporting_is_read_from_the_balloon_features(tmp_path):
    from gru_torch import machine

    assert not machine.returns_free_memory(tmp_path / "no-balloon")
    (tmp_path / "virtio0").mkdir()
    features = tmp_path / "virtio0" / "features"
    features.write_text("0110000" + "0" * 57 + "\n")  # stats, deflate on OOM: no reporting
    assert not machine.returns_free_memory(tmp_path)
    features.write_text("0110010" + "0" * 57 + "\n")  # bit 5: free page reporting
    assert machine.returns_free_memory(tmp_path)


@pytest.mark.parametrize("reports,pool,noted", [(True, "0", True), (True, None, False),
                                                (False, "0", False)])
def test_results_say_when_fresh_buffers_may_fault_on_the_host(bench, monkeypatch, tmp_path,
                                                              reports, pool, noted):
    """With the pool off on a machine that hands freed memory to its host, the report says
    why the fused op's times may vary, and the JSON keeps both settings."""
    monkeypatch.setattr(bench.machine, "returns_free_memory", lambda: reports)
    if pool is None:
        monkeypatch.delenv("GRU_TORCH_CPU_POOL_MB", raising=False)
    else:
        monkeypatch.setenv("GRU_TORCH_CPU_POOL_MB", pool)
    out = tmp_path / "r.json"
    assert bench.main(["--shapes", "2,3,2,2", "--repeats", "1", "--warmup", "0", "--backends",
                       "cudnn", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["returns_free_memory"] is reports
    assert data["pool_mb"] == pool
    assert ("hands freed memory back to its host" in out.with_suffix(".md").read_text()) is noted


@pytest.mark.skipif(not gru_torch.extension_status().loaded, reason="needs the fused op")
def test_check_aborts_when_fused_disagrees(monkeypatch, bench):
    real = gru_torch.ops.gru_layer

    def off_by_a_little(*args, **kwargs):
        out, h_n = real(*args, **kwargs)
        return out * (1 + 1e-6), h_n

    monkeypatch.setattr(gru_torch.ops, "gru_layer", off_by_a_little)
    args = bench.parse_args(["--shapes", "3,5,2,4", "--no-save"])
    with pytest.raises(SystemExit, match="CHECK FAILED.*fused and reference differ in output"):
        bench.check_shape(args.shapes[0], args, torch.device("cpu"))


@pytest.mark.skipif(not gru_torch.extension_status().loaded, reason="needs the fused op")
def test_lstm_check_compares_c_n(monkeypatch, bench):
    real = gru_torch.ops.family_layer

    def c_n_off_by_a_little(*args, **kwargs):
        out, h_n, c_n = real(*args, **kwargs)
        return out, h_n, c_n * (1 + 1e-6)

    monkeypatch.setattr(gru_torch.ops, "family_layer", c_n_off_by_a_little)
    args = bench.parse_args(["--cell", "lstm", "--shapes", "3,5,2,4", "--no-save"])
    with pytest.raises(SystemExit, match="CHECK FAILED.*fused and reference differ in c_n"):
        bench.check_shape(args.shapes[0], args, torch.device("cpu"))


def has_onnxruntime() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


@pytest.mark.skipif(not gru_torch.extension_status().loaded, reason="needs the fused op")
def test_alternate_mode_reports_ratios_floor_and_busy_slowdown(tmp_path):
    out = tmp_path / "alt.json"
    backends = "fused,cudnn,onnxruntime" if has_onnxruntime() else "fused,cudnn"
    proc = run_script("--shapes", "6,12,3,8", "--mode", "alternate", "--vary-t", "--repeats", "3",
                      "--warmup", "1", "--backends", backends, "--busy", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["mode"] == "alternate"
    quiet = [r for r in data["rows"] if "busy" not in r]
    busy = [r for r in data["rows"] if r.get("busy") == 1]
    expected = {("fused", "forward"), ("fused", "forward+backward"), ("cudnn", "forward"),
                ("cudnn", "forward+backward")}
    if has_onnxruntime():
        expected.add(("onnxruntime", "forward"))  # inference only
    assert {(r["backend"], r["pass"]) for r in quiet} == expected
    assert {(r["backend"], r["pass"]) for r in busy} == expected
    for r in quiet:
        assert r["mode"] == "alternate" and r["repeats"] == 3 and r["median_ms"] > 0
        assert all(6 <= T <= 12 for T in r["lengths"] or [12])
        assert r["median_ratio_to_floor"] > 0
        if r["backend"] == "fused":
            assert r["gemm_floor_ms"] > 0
        else:
            lo, hi = r["ratio_to_fused_range"]
            assert 0 < lo <= r["median_ratio_to_fused"] <= hi
    for r in busy:
        assert r["slowdown"] == pytest.approx(r["median_ms"] / r["quiet_ms"])
    markdown = out.with_suffix(".md").read_text()
    assert "| 6,12,3,8 | forward+backward |" in markdown and "slowdown" in markdown
    assert "| fused / GEMM floor | nn.GRU / GEMM floor |" in markdown
    assert re.search(r"\| \d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\) \|", markdown)  # median (range)


@pytest.mark.skipif(not has_onnxruntime(), reason="needs onnx and onnxruntime")
def test_onnxruntime_backend_matches_nn_gru_and_times_forward_only(tmp_path):
    import torch
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_onnxruntime

    for bidirectional, bias in ((False, True), (True, True), (False, False)):
        gru = torch.nn.GRU(5, 7, bidirectional=bidirectional, bias=bias)
        assert bench_onnxruntime.check(bench_onnxruntime.OrtGRU(gru, 1), gru,
                                       torch.randn(9, 3, 5)) < 1e-5
    out = tmp_path / "ort.json"
    proc = run_script("--shapes", "4,6,3,5", "--repeats", "2", "--warmup", "0",
                      "--backends", "cudnn,onnxruntime", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {(r["backend"], r["pass"]) for r in rows} == {
        ("cudnn", "forward"), ("cudnn", "forward+backward"), ("onnxruntime", "forward")}
    assert json.loads(out.read_text())["ort_spinning"] is False


@pytest.mark.skipif(not has_onnxruntime(), reason="needs onnx and onnxruntime")
def test_onnxruntime_lstm_and_rnn_nodes_match_nn():
    """ONNX's LSTM (gates i, o, f, c; Y_c beside Y_h) and RNN (Tanh or Relu) nodes."""
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_onnxruntime

    x = torch.randn(9, 3, 5)
    for bidirectional, bias in ((False, True), (True, True), (False, False)):
        for module in (torch.nn.LSTM(5, 7, bidirectional=bidirectional, bias=bias),
                       torch.nn.RNN(5, 7, bidirectional=bidirectional, bias=bias),
                       torch.nn.RNN(5, 7, nonlinearity="relu", bidirectional=bidirectional,
                                    bias=bias)):
            ort = bench_onnxruntime.OrtRNN(module, 1)
            assert bench_onnxruntime.check(ort, module, x) < 1e-5
    out, (h_n, c_n) = bench_onnxruntime.OrtRNN(torch.nn.LSTM(5, 7), 1)(x)
    assert out.shape == (9, 3, 7) and h_n.shape == c_n.shape == (1, 3, 7)
    relu = torch.nn.RNN(5, 7, nonlinearity="relu")
    tanh = torch.nn.RNN(5, 7)
    tanh.load_state_dict(relu.state_dict())
    with pytest.raises(RuntimeError, match="onnxruntime's RNN differs from nn.RNN"):
        bench_onnxruntime.check(bench_onnxruntime.OrtRNN(relu, 1), tanh, x)


@pytest.mark.skipif(not gru_torch.extension_status().loaded, reason="needs the fused op")
@pytest.mark.parametrize("cell, mode, extra", [
    ("lstm", "interleaved", ["--bidirectional"]),
    ("lstm", "alternate", ["--loss", "final"]),
    ("rnn_tanh", "interleaved", ["--loss", "final"]),
    ("rnn_tanh", "alternate", ["--bidirectional"]),
])
def test_lstm_and_rnn_cells_are_checked_timed_and_named(tmp_path, cell, mode, extra):
    out = tmp_path / f"{cell}-{mode}.json"
    backends = "fused,cudnn,onnxruntime" if has_onnxruntime() else "fused,cudnn"
    proc = run_script("--cell", cell, "--shapes", "4,6,3,5", "--mode", mode, "--repeats", "2",
                      "--warmup", "0", "--backends", backends, *extra, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "check B=4 T=6 I=3 H=5: ok on B=4 T=6 I=3 H=5 in float64, fused and cudnn vs " \
           "reference" in proc.stdout
    data = json.loads(out.read_text())
    assert data["cell"] == cell and data["mode"] == mode
    expected = {(b, p) for b in ("fused", "cudnn") for p in ("forward", "forward+backward")}
    if has_onnxruntime():
        expected.add(("onnxruntime", "forward"))  # inference only
    assert {(r["backend"], r["pass"]) for r in data["rows"]} == expected
    assert all(r["median_ms"] > 0 and r["bidirectional"] == ("--bidirectional" in extra)
               for r in data["rows"])
    nn_name, gates = ("nn.LSTM", "4H") if cell == "lstm" else ("nn.RNN", "H")
    markdown = out.with_suffix(".md").read_text()
    assert markdown.startswith(f"# {nn_name[3:]} benchmark: ")
    assert "GRU" not in markdown
    assert (", nonlinearity=tanh;" in markdown) == (cell == "rnn_tanh")
    assert f"recurrent GEMM 2*B*H*{gates} = " in markdown
    if mode == "alternate":
        assert f"| {nn_name} ms |" in markdown and f"| {nn_name} / fused (rounds' range) |" in markdown
        assert re.search(r"\| 4,6,3,5 \| forward\+backward \| [\d.]+ \| [\d.]+ \| (- \| )?"
                         r"\d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\) \|", markdown)
    else:
        assert f"| {nn_name} ms |" in markdown and f"| fused vs {nn_name} |" in markdown
        row = next(line for line in markdown.splitlines()
                   if line.startswith("| 4,6,3,5 | float32 | forward+backward |"))
        assert re.fullmatch(r"\d+\.\d\dx", row.split(" | ")[9])  # fused vs nn.LSTM / nn.RNN
    assert out.with_suffix(".png").stat().st_size > 1000


@pytest.mark.skipif(not has_onnxruntime(), reason="needs onnx and onnxruntime")
def test_onnxruntime_threads_spin_only_when_asked():
    """Spinning ONNX Runtime threads would take the cores of the backend timed after them."""
    import torch
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_onnxruntime

    gru = torch.nn.GRU(5, 7)
    for spinning, want in ((False, "0"), (True, "1")):
        options = bench_onnxruntime.OrtGRU(gru, 1, spinning).session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == want


def test_vary_t_needs_alternate_mode():
    proc = run_script("--vary-t", "--no-save")
    assert proc.returncode == 2 and "--vary-t needs --mode alternate" in proc.stderr


def test_turns_follow_different_backends():
    """A rotation alone would keep each backend right after the same one."""
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_modes

    names = ["fused", "fused+ftz", "cudnn"]
    orders = [bench_modes.round_order(names, r) for r in range(6)]
    assert all(sorted(o) == sorted(names) for o in orders)
    before_fused = {o[o.index("fused") - 1] for o in orders if o.index("fused") > 0}
    assert before_fused == {"fused+ftz", "cudnn"}
    assert [o[0] for o in orders[:3]] == ["fused", "fused+ftz", "cudnn"]
