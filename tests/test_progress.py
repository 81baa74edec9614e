"""Progress outside a terminal, the run folder's log and config, threads, the plot."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gru_torch import cli, machine, progress, train

ROOT = Path(__file__).resolve().parents[1]
STATUS = re.compile(r"(\d+)/(\d+) batches  [\d,.]+ samples/s  (ETA \S+|in \S+)  loss [\d.]+  acc [\d.]+")


def test_status_line_counts_rates_and_eta(monkeypatch):
    clock = iter([100.0, 102.0, 104.0])  # start, then each status line
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    lines = []
    meter = progress.Progress("epoch 1/2 train", 4, rate_unit="samples", log=lines.append,
                              every=3600, bar=False)
    meter.update(1, items=32, loss=0.5, acc=0.75)
    assert meter.status() == \
        "epoch 1/2 train  1/4 batches  16 samples/s  ETA 6s  loss 0.5000  acc 0.7500"
    final = "epoch 1/2 train  1/4 batches  8 samples/s  in 4s  loss 0.5000  acc 0.7500"
    assert meter.close() == final
    assert lines == [final], "no timed line within the hour, then the final one"


def test_status_lines_come_on_time_even_during_a_long_step():
    """The timer thread reports while the caller is stuck in one long step, never more
    often than the interval, and stops with close()."""
    stamps = []
    meter = progress.Progress("x", 10, log=lambda line: stamps.append(time.monotonic()),
                              every=0.1, bar=False)
    meter.update()
    deadline = time.monotonic() + 20
    while len(stamps) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)  # one long step: no update() in the meantime
    meter.close()
    assert len(stamps) >= 5, "four timed lines and the final one"
    gaps = [b - a for a, b in zip(stamps[:4], stamps[1:4])]
    assert min(gaps) >= 0.09
    count = len(stamps)
    time.sleep(0.3)
    assert len(stamps) == count, "nothing after close()"
    assert cli._parse_train([]).log_every == progress.STATUS_EVERY_S == 30


def test_run_log_writes_console_and_stamped_file(tmp_path, capsys):
    log = progress.RunLog()
    log.open(tmp_path / "train.log")
    log("shown and kept")
    log("kept only", console=False)
    log.close()
    assert capsys.readouterr().out == "shown and kept\n"
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert [line[20:] for line in lines] == ["shown and kept", "kept only"]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", lines[0])


def test_non_tty_training_run_shows_progress(tmp_path):
    """stdout to a pipe (no terminal): status lines at the interval, the data loading said,
    a one-line config, and the run folder holds train.log, config.json, history and plot."""
    out = tmp_path / "run"
    env = {**os.environ, "GRU_TORCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--data", "sample", "--out", str(out),
         "--epochs", "2", "--batch-size", "4", "--limit-train", "40", "--limit-test", "20",
         "--threads", "1", "--log-every", "0.05"],  # an epoch here can take under 0.5 s
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = proc.stdout.splitlines()
    assert "\r" not in proc.stdout + proc.stderr, "no bars outside a terminal"
    config_lines = [line for line in stdout if line.startswith("config: ")]
    assert len(config_lines) == 1 and "model gru 128" in config_lines[0]
    assert not any(line.strip() in ("{", "}") for line in stdout), "no config dump"
    assert any(line.startswith("IMDB data: ") for line in stdout)
    assert any("tokenizing" in line for line in stdout)
    for epoch in (1, 2):
        status = [line for line in stdout if line.startswith(f"epoch {epoch}/2 train ")]
        assert len(status) >= 3, stdout
        started = [line for line in status if not line.endswith(" 0/9 batches")]
        assert started and all(STATUS.search(line) for line in started), status
        assert any("ETA" in line for line in started)
        assert status[-1].split()[3] == "9/9" and " in " in status[-1]  # 36 reviews / 4
        assert any(line.startswith(f"epoch {epoch}/2 validation ") for line in stdout)
    assert any(line.startswith("test ") and STATUS.search(line) for line in stdout)
    assert any(str(out / "best.pt") in line for line in stdout), "says where the model is"
    logged = (out / "train.log").read_text()
    assert sum(1 for line in logged.splitlines() if " batches" in line) >= 8
    assert "Total params" in logged, "the layer table goes to the log"
    assert json.loads((out / "config.json").read_text())["threads"] == 1
    for name in ("history.json", "history.png", "metrics.json", "best.pt"):
        assert (out / name).is_file(), name


def test_history_plot_whole_epochs_title_and_test_accuracy(tmp_path):
    pytest.importorskip("matplotlib")
    history = train.History(rows=[{"epoch": e, "loss": 1 / e, "accuracy": 0.5 + e / 20,
                                   "val_loss": 1.1 / e, "val_accuracy": 0.5 + e / 25}
                                  for e in (1, 2, 3)], title="gru (gru-default)",
                            test_accuracy=0.8731)
    fig = history.figure()
    fig.canvas.draw()
    assert fig._suptitle.get_text() == "gru (gru-default): test accuracy 87.31%"
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks)
    assert history.plot(tmp_path / "history.png") and (tmp_path / "history.png").is_file()


def test_missing_matplotlib_is_said_once(monkeypatch, caplog, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(train, "_said_no_matplotlib", False)
    history = train.History(rows=[{"epoch": 1, "loss": 0.5}])
    with caplog.at_level(logging.WARNING, logger="gru_torch"):
        assert not history.plot(tmp_path / "a.png")
        assert not history.plot(tmp_path / "b.png")
    said = [r for r in caplog.records if "matplotlib is not installed" in r.getMessage()]
    assert len(said) == 1 and not (tmp_path / "a.png").exists()


def test_default_threads_are_the_physical_cores(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert 1 <= machine.physical_cores() <= os.cpu_count()
        assert cli.set_threads(None) == machine.physical_cores() == torch.get_num_threads()
        assert cli.set_threads(None, processes=machine.physical_cores() * 2) == 1
        assert cli.set_threads(3) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_busy_note(monkeypatch):
    monkeypatch.setattr(machine, "_allowed_cpus", lambda: {0, 1})
    monkeypatch.setattr(machine, "load_average", lambda: 2.6)
    note = machine.busy_note(2)
    assert "load average 2.6 on 2 CPUs" in note and "--threads 1" in note
    assert "torch.set_num_threads(1)" in note and "OMP_WAIT_POLICY=PASSIVE" in note
    assert "\n" not in note
    assert machine.busy_note(1) is None
    monkeypatch.setattr(machine, "load_average", lambda: 0.3)
    assert machine.busy_note(2) is None
