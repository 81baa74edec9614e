"""Batching, the trainer and the command lines, on the real archive where needed."""
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import gru_torch
from gru_torch import backends, cli, ops, presets, train
from gru_torch.data.batching import ReviewBatches

REAL = Path(os.environ.get("GRU_TORCH_TEST_DATA", Path(__file__).resolve().parents[1].parent
                           / "shared" / "data" / "aclImdb_v1-text.tar.gz"))
needs_real = pytest.mark.skipif(not REAL.is_file(), reason=f"IMDB archive not at {REAL}")
ROOT = Path(__file__).resolve().parents[1]


def test_batches_carry_lengths_and_cover_every_row():
    seqs = [list(range(1, n + 1)) for n in (5, 1, 9, 3, 7, 2, 8)]
    labels = np.arange(7) % 2
    for bucket in (False, True):
        seen = []
        for ids, lengths, y in ReviewBatches(seqs, labels, 3, maxlen=6, bucket=bucket, seed=1):
            for row, n in zip(ids, lengths):
                assert (row[n:] == 0).all() and (row[:n] > 0).all()
                seen.append(int(row[n - 1]))  # maxlen keeps each review's end
        assert sorted(seen) == sorted(s[-1] for s in seqs)
    padded = next(iter(ReviewBatches(seqs, labels, 3, maxlen=6, shuffle=False, pad_to=6)))[0]
    assert padded.shape == (3, 6)


def test_bucketing_reduces_padding():
    rng = np.random.RandomState(0)
    seqs = [[1] * n for n in rng.randint(1, 400, 2000)]
    labels = np.zeros(2000)

    def padding(bucket):
        return sum(int(ids.numel() - lengths.sum())
                   for ids, lengths, _ in ReviewBatches(seqs, labels, 32, bucket=bucket))
    assert padding(True) < padding(False) / 3


def _run_train(out, *extra, env=None):
    return cli.train_main(["--data", str(REAL), "--out", str(out), "--limit-train", "1200",
                           "--limit-test", "300", "--threads", "2", *extra])


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """One token cache for the tests here: the archive is tokenized once, not per test."""
    return os.environ.get("GRU_TORCH_TEST_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def cache(session_cache, monkeypatch):
    monkeypatch.setenv("GRU_TORCH_CACHE", session_cache)


@needs_real
def test_short_training_run_loss_falls(tmp_path, cache):
    out = tmp_path / "run"
    assert _run_train(out, "--epochs", "3", "--lr", "0.003") == 0
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"test_accuracy", "test_loss", "epochs", "train_seconds", "backend",
                            "recurrent_backend", "peak_rss_mb"}
    assert metrics["peak_rss_mb"] > 100  # MiB: torch itself takes more
    for name in ("best.pt", "last.pt", "history.csv", "history.png"):
        assert (out / name).is_file(), name
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["config"]["num_words"] == 20000 and len(state["vocab"]) > 1000
    # the checkpoint alone classifies raw text
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), "--checkpoint",
                           str(out / "best.pt"), "--json", "A wonderful film.", "Dull, awful."],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["text"] for r in rows] == ["A wonderful film.", "Dull, awful."]
    assert all(0 <= r["positive_probability"] <= 1 and r["label"] in ("positive", "negative")
               for r in rows)


@needs_real
def test_resume_after_kill(tmp_path, cache):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--data", str(REAL), "--out",
           str(out), "--limit-train", "1200", "--limit-test", "300", "--epochs", "6"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "history.json").is_file() and json.loads((out / "history.json").read_text()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(json.loads((out / "history.json").read_text()))
    assert 1 <= done < 6
    first = json.loads((out / "history.json").read_text())[0]
    resumed = subprocess.run(cmd + ["--resume", "--epochs", str(done + 1)], capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed after epoch {done}" in resumed.stdout
    history = json.loads((out / "history.json").read_text())
    assert len(history) == done + 1 and history[0] == first
    assert [r["epoch"] for r in history] == list(range(1, done + 2))


def test_bad_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train.load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(train.CheckpointError, match="not a readable"):
        train.load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(train.CheckpointError, match="lacks"):
        train.load_checkpoint(tmp_path / "partial.pt")
    state = {"version": train.CHECKPOINT_VERSION, "model": {"embedding.weight": torch.zeros(3, 2)},
             "config": {"model": {"vocab_size": 10, "embed_dim": 4}}, "vocab": []}
    with pytest.raises(train.CheckpointError, match="does not load"):
        train.model_from_checkpoint(state)


def test_list_presets(capsys):
    assert cli.train_main(["--list-presets"]) == 0
    text = capsys.readouterr().out
    assert "gru100-recdrop" in text and "120,801" in text and "bilstm32x2" in text


def test_dropout_masks_and_gate_flags_override_the_preset(capsys):
    """--dropout-masks and --recurrent-activation change a preset's Keras semantics:
    notebook A's GRU runs on the family op as the notebook computed it, and with shared
    masks and sigmoid gates on the GRU op (the input projection fused into its loop)."""
    from gru_torch.rnn_base import RNNBase
    args = ["--preset", "gru100-recdrop"]

    def fused(*more):
        """(fused at all, on the GRU op) per recurrent layer."""
        model = presets.SentimentClassifier(cli.chosen_preset(cli._parse_train([*args, *more])).model)
        return [(backends.fused_reason(cfg) is None,
                 ops.gru_op_reason(cfg.cell, True, cfg.masks, cfg.input_dropout) is None)
                for cfg in (m.training_config(torch.device("cpu"))
                            for m in model.modules() if isinstance(m, RNNBase))]

    loaded = gru_torch.extension_status().loaded
    assert fused() == [(loaded, False)]
    assert fused("--dropout-masks", "shared") == [(loaded, False)]   # still the hard sigmoid
    assert fused("--dropout-masks", "shared", "--recurrent-activation", "sigmoid") == [(loaded, True)]
    model = cli.chosen_preset(cli._parse_train([*args, "--recurrent-activation",
                                                "hard_sigmoid_keras3"])).model
    assert model.recurrent_activation == "hard_sigmoid_keras3" and model.dropout_masks == "per_gate"
    assert cli.train_main(["--preset", "rnn128", "--recurrent-activation", "sigmoid"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --recurrent-activation") and "Traceback" not in err
    with pytest.raises(SystemExit) as stop:
        cli.train_main(["--preset", "gru128", "--dropout-masks", "bogus"])
    assert stop.value.code == 2 and "per_gate" in capsys.readouterr().err


def test_init_and_recurrent_dropout_flags_override_the_preset():
    pick = lambda *a: cli.chosen_preset(cli._parse_train(list(a))).model.init  # noqa: E731
    assert pick("--preset", "gru32x2") == "keras"
    assert pick("--preset", "gru32x2", "--init", "torch") == "torch"
    assert pick("--cell", "gru") == "torch"
    assert pick("--cell", "lstm", "--init", "keras") == "keras"
    model = cli.chosen_preset(cli._parse_train(["--preset", "gru32x2", "--recurrent-dropout", "0.2"])).model
    assert model.recurrent_dropout == 0.2 and model.init == "keras"
    with pytest.raises(SystemExit):
        cli._parse_train(["--recurrent-dropout", "1.5"])
    with pytest.raises(SystemExit):
        cli._parse_train(["--preset", "gru999"])


def test_encode_uses_keras_ids():
    vocab = ["the", "film", "good"]
    assert cli.encode("The good, unseen film", vocab, num_words=6, maxlen=None) == [1, 4, 2, 2, 2, 5]


def test_two_process_gloo_ddp(tmp_path):
    """torchrun with 2 CPU processes (gloo) on the shipped sample: both ranks train their
    shard, rank 0 alone writes the results."""
    out = tmp_path / "ddp"
    env = {**os.environ, "GRU_TORCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29517", str(ROOT / "scripts" / "train.py"), "--data", "sample",
         "--out", str(out), "--epochs", "2", "--batch-size", "8", "--device", "cpu",
         "--threads", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("test:") == 1, "only rank 0 reports"
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["config"]["world_size"] == 2
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and all(0 <= r["accuracy"] <= 1 for r in history)


def test_compile_matches_eager_and_saves_plain_checkpoints(tmp_path):
    """--compile: torch.compile (inductor) of the classifier, fused GRU op inside, gives the
    eager model's logits and gradients, and the run's checkpoints load into a plain model."""
    from gru_torch.models import ModelConfig, SentimentClassifier
    torch.manual_seed(0)
    model = SentimentClassifier(ModelConfig(vocab_size=100, embed_dim=8, hidden=[6],
                                            pooling="last+max"))
    ids, lengths = torch.randint(1, 100, (4, 9)), torch.tensor([9, 3, 7, 1])
    compiled = torch.compile(model)
    results = []
    for m in (model, compiled):
        logits = m(ids, lengths)
        grads = torch.autograd.grad(logits.sum(), list(model.parameters()))
        results.append((logits, *grads))
    for c, e in zip(results[1], results[0]):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)

    out = tmp_path / "compiled"
    env = {**os.environ, "GRU_TORCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--data", "sample", "--out", str(out),
         "--epochs", "1", "--batch-size", "25", "--no-bucket", "--compile", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((out / "config.json").read_text())["compile"] is True
    state = train.load_checkpoint(out / "last.pt")
    assert not any(k.startswith("_orig_mod") for k in state["model"])
    train.model_from_checkpoint(state)  # strict load into an uncompiled model


def test_backend_flag_overrides_the_preset_and_is_recorded(tmp_path, cache):
    pick = lambda *a: cli.chosen_preset(cli._parse_train(list(a))).model.backend  # noqa: E731
    assert pick("--preset", "gru128") == "auto"
    assert pick("--preset", "gru128", "--backend", "cudnn") == "cudnn"
    with pytest.raises(SystemExit):
        cli._parse_train(["--backend", "cuda"])
    out = tmp_path / "ref"
    assert cli.train_main(["--data", "sample", "--out", str(out), "--epochs", "1",
                           "--batch-size", "25", "--device", "cpu", "--backend", "reference"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"] == "reference" and metrics["recurrent_backend"] == "reference"


def test_backend_that_cannot_run_the_preset_stops_before_training(tmp_path, cache):
    # gru100-recdrop is the Keras 2 cell (reset_after=False) with recurrent dropout
    with pytest.raises(SystemExit, match="backend='cudnn' cannot run: nn.GRU has no reset_after"):
        cli.train_main(["--preset", "gru100-recdrop", "--data", "sample", "--out",
                        str(tmp_path / "x"), "--epochs", "1", "--device", "cpu", "--backend", "cudnn"])
    assert not (tmp_path / "x" / "history.json").exists()


def test_epoch_seconds_script_times_fused_against_the_right_baseline(tmp_path):
    """scripts/epoch_seconds.py: every preset; those whose cell or dropout torch.nn cannot
    express (the Keras 2 hard sigmoid, per-gate masks) are timed against the reference
    loop, the others against torch.nn's kernel. Every preset runs on the fused op (the
    GRU op, or the family op for the LSTM, the RNN and the Keras GRUs). One run on the
    sample."""
    if not gru_torch.extension_status().loaded:
        pytest.skip("the fused extension is not loaded")
    sys.path.insert(0, str(ROOT / "scripts"))
    import epoch_seconds
    assert set(epoch_seconds.PRESETS) == set(presets.PRESETS)
    assert {p: epoch_seconds.baseline(p) for p in epoch_seconds.PRESETS} == {
        "gru128": "cudnn", "rnn128": "cudnn", "lstm128": "cudnn",
        "gru100-recdrop": "reference", "gru50-rawids": "reference", "gru32-onehot": "reference",
        "gru32x2": "reference", "lstm32x2": "reference", "bilstm32x2": "reference"}
    assert {p for p in epoch_seconds.PRESETS if epoch_seconds.fused_runs(p)} == set(presets.PRESETS)
    env = {**os.environ, "GRU_TORCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "epoch_seconds.py"), "--data", "sample",
         "--only", "gru128", "rnn128", "--runs", str(tmp_path / "runs"),
         "--results", str(tmp_path / "res"), "--machine", "test"],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads((tmp_path / "res" / "epoch-seconds-test.json").read_text())["rows"]
    table = (tmp_path / "res" / "epoch-seconds-test.md").read_text()
    assert [r["preset"] for r in rows] == ["gru128", "rnn128"]
    for row in rows:
        assert row["baseline"] == "cudnn"
        assert row["fused_epoch_s"] > 0 and row["baseline_epoch_s"] > 0
        assert row["speedup"] == pytest.approx(row["baseline_epoch_s"] / row["fused_epoch_s"])
        assert row["fused_peak_rss_mb"] > 100 and row["baseline_peak_rss_mb"] > 100  # torch alone
        assert f"| {row['preset']} | torch.nn |" in table
        assert f"| {row['fused_peak_rss_mb']:.0f} | {row['baseline_peak_rss_mb']:.0f} |" in table
    assert epoch_seconds.cpu_model() in table


def _fake_run(out: Path, acc: float, seconds=(10.0, 14.0), backend="fused"):
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps(
        {"test_accuracy": acc, "epochs": len(seconds), "train_seconds": sum(seconds),
         "recurrent_backend": backend}))
    (out / "history.json").write_text(json.dumps(
        [{"seconds": s, "val_accuracy": 0.5 + 0.1 * k} for k, s in enumerate(seconds)]))


def test_compare_notebooks_reports_seeds_and_checks_the_claims(tmp_path):
    """scripts/compare_notebooks.py --collect: per preset Keras's and our parameter
    counts, mean ± sd over seeds beside the notebook's figure, and each notebook claim
    held or not, with its numbers; pictures beside the report."""
    runs = tmp_path / "runs"
    accs = {"gru128": (0.86, 0.87, 0.85), "lstm128": (0.85, 0.86, 0.84),
            "rnn128": (0.70, 0.72, 0.74), "lstm32x2": (0.85, 0.85, 0.86),
            "bilstm32x2": (0.86, 0.86, 0.87)}
    secs = {"gru128": (10.0,), "lstm128": (20.0,), "rnn128": (5.0,), "lstm32x2": (30.0,),
            "bilstm32x2": (90.0,)}
    for name, values in accs.items():
        for seed, acc in enumerate(values):
            _fake_run(runs / name / f"seed{seed}", acc, secs[name])
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_notebooks.py"),
                           "--collect", "--runs", str(runs), "--out", str(out), "--presets",
                           *accs],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    # mean 86.00% sd 1.00%: the notebook's 86.08% is 0.1 sd below
    assert "| gru128 | C | 1,379,201 | 1,379,201 | 86.00% ± 1.00% | 86.08% | -0.1 | 10.0 |" in report
    assert "- **GRUs train faster than LSTMs for similar accuracy** (gru128 against lstm128): held" in report
    assert "- **GRUs have fewer parameters** (gru128 against lstm128): held: 1,379,201 against 1,411,713." in report
    assert "- **A bidirectional RNN takes about twice the time** (bilstm32x2 against lstm32x2): did not hold: 3.00x" in report
    assert "- **A SimpleRNN does worse** (rnn128 against gru128 and lstm128): held: 72.00% against 86.00%, 85.00%." in report
    meta = json.loads((out / "report.json").read_text())
    assert [r["preset"] for r in meta["rows"]] == list(accs)
    for picture in ("accuracy.png", "accuracy-vs-time.png", "validation-curves.png"):
        assert (out / picture).stat().st_size > 10_000, picture
        assert f"![{picture}]({picture})" in report


def test_compare_notebooks_trains_resumes_and_estimates(tmp_path):
    """A short real comparison on the sample data: two seeds of a preset and of the default
    recipe; run again, it keeps every finished run; the log says what it expects."""
    runs, out = tmp_path / "runs", tmp_path / "report"
    cmd = [sys.executable, str(ROOT / "scripts" / "compare_notebooks.py"), "--data", "sample",
           "--presets", "gru128", "default", "--seeds", "2", "--epochs", "1",
           "--limit-train", "200", "--limit-test", "100", "--runs", str(runs), "--out", str(out)]
    env = {**os.environ, "GRU_TORCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "4 runs, 0 finished already; 4 runs to train" in proc.stdout
    assert "[4/4] default seed 1: test accuracy" in proc.stdout
    report = (out / "report.md").read_text()
    assert "A shortened run" in report and "| default | - | - | - |" in report
    first = (runs / "gru128" / "seed0" / "metrics.json").stat().st_mtime
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 runs, 4 finished already; every run is finished already" in again.stdout
    assert (runs / "gru128" / "seed0" / "metrics.json").stat().st_mtime == first
    assert "4 runs, 4 finished already" in (runs / "compare.log").read_text()
    seeds = json.loads((out / "report.json").read_text())["rows"][0]["accuracies"]
    assert len(seeds) == 2
    # a fresh clone has no runs/, but the records beside the report: nothing to train again
    record = json.loads((out / "runs" / "default" / "seed1.json").read_text())
    assert record["settings"][:2] == ["--cell", "gru"] and record["metrics"]["epochs"] == 1
    assert record["cpu"] and len(record["history"]) == 1
    shutil.rmtree(runs)
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "4 runs, 4 finished already" in third.stdout
    assert json.loads((out / "report.json").read_text())["rows"][0]["accuracies"] == seeds


def test_compare_notebooks_same_run_whatever_the_data_path_looks_like():
    """A run recorded with --data given as an absolute path is the same run when the
    archive is named by a relative path: only the paths differ, not the settings."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "compare_notebooks", ROOT / "scripts" / "compare_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tail = ["--preset", "gru128", "--seed", "1", "--data"]
    absolute = ["python", "train.py", *tail, "/work/shared/imdb.tar.gz", "--out", "/runs/a"]
    relative = ["python", "train.py", *tail, "../shared/imdb.tar.gz", "--out", "runs/b"]
    assert mod.settings(absolute) == mod.settings(relative) == [*tail, "--out"]
    assert mod.settings([*relative, "--epochs", "2"]) != mod.settings(relative)


def test_compare_notebooks_estimate_takes_each_preset_from_the_newest_file_that_has_it(
        tmp_path, monkeypatch):
    """A later epoch-seconds file with one preset (a rerun) does not hide the others."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "compare_notebooks", ROOT / "scripts" / "compare_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cpu = mod.machine.cpu_model()
    full = tmp_path / "epoch-seconds-full.json"
    full.write_text(json.dumps({"cpu": cpu, "rows": [
        {"preset": "gru128", "fused_epoch_s": 25.0, "baseline_epoch_s": 150.0},
        {"preset": "lstm128", "fused_epoch_s": 29.0, "baseline_epoch_s": 100.0}]}))
    rerun = tmp_path / "epoch-seconds-rerun.json"
    rerun.write_text(json.dumps({"cpu": cpu, "rows": [
        {"preset": "gru128", "fused_epoch_s": 19.0, "baseline_epoch_s": 115.0}]}))
    os.utime(full, (1, 1))  # the older of the two
    other = tmp_path / "epoch-seconds-other-cpu.json"
    other.write_text(json.dumps({"cpu": cpu + " (another)", "rows": [
        {"preset": "rnn128", "fused_epoch_s": 1.0, "baseline_epoch_s": 1.0}]}))
    monkeypatch.setattr(mod, "RESULTS", tmp_path)
    seconds, source = mod.measured_epoch_seconds()
    assert seconds == {"gru128": 19.0, "lstm128": 29.0}
    assert source == "epoch-seconds-rerun.json, epoch-seconds-full.json"
