"""Every error a user of the command lines can cause and mend prints one line on stderr,
`error: ...`, with no traceback, and exits with status 2; --debug shows the traceback."""
from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from gru_torch import cli, train
from gru_torch.data import archive

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def one_line_error(stderr: str) -> str:
    # torch's own glog-style warnings ("W1123 18:41:52 ...") are not ours
    lines = [line for line in stderr.splitlines()
             if line.strip() and not re.match(r"[WI]\d{4} ", line)]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def call(main, argv, capsys) -> tuple[int, str]:
    """main(argv) in this process: (exit status, the one error line)."""
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's usage errors
        status = e.code
    return status, one_line_error(capsys.readouterr().err)


@pytest.fixture
def junk(tmp_path) -> Path:
    path = tmp_path / "junk.bin"
    path.write_bytes(b"neither a gzip archive nor a checkpoint")
    return path


def test_script_missing_data_path(tmp_path):
    proc = run_script("train.py", "--data", str(tmp_path / "nope.tar.gz"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "nope.tar.gz' does not exist" in one_line_error(proc.stderr)
    assert not (tmp_path / "runs").exists(), "nothing is written before the data is found"


def test_script_empty_text_and_debug(tmp_path, junk):
    proc = run_script("predict.py", "--checkpoint", str(junk), "good", "  ", cwd=tmp_path)
    assert proc.returncode == 2 and "text 2 of 2 is empty" in one_line_error(proc.stderr)
    proc = run_script("predict.py", "--checkpoint", str(junk), "--debug", "good", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


@pytest.mark.parametrize("argv,expected", [
    (["--preset", "gru999"], "invalid choice: 'gru999'"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--log-every", "-1"], "--log-every must be positive"),
    (["--cell", "transformer"], "invalid choice: 'transformer'"),
])
def test_train_argument_errors(argv, expected, capsys):
    status, line = call(cli.train_main, argv, capsys)
    assert status == 2 and expected in line


def test_train_corrupt_archive(tmp_path, junk, capsys, monkeypatch):
    monkeypatch.setenv("GRU_TORCH_CACHE", str(tmp_path / "cache"))
    status, line = call(cli.train_main, ["--data", str(junk), "--out", str(tmp_path / "run")],
                        capsys)
    assert status == 2 and "is corrupt or truncated" in line
    assert "error: " in (tmp_path / "run" / "train.log").read_text(), "the log says why it ended"


def test_train_wrong_layout(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GRU_TORCH_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("aclImdb/train/pos/0_9.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"good"))
    status, line = call(cli.train_main, ["--data", str(bad), "--out", str(tmp_path / "run")], capsys)
    assert status == 2 and "not in the official IMDB layout" in line


def test_train_offline_with_no_data_fails_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GRU_TORCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GRU_TORCH_DATA", raising=False)
    monkeypatch.setattr(archive, "checkout_shared_dirs", lambda: [])

    def offline(*a, **k):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(archive.urllib.request, "urlopen", offline)
    t0 = time.perf_counter()
    status, line = call(cli.train_main, ["--out", str(tmp_path / "run")], capsys)
    assert status == 2 and time.perf_counter() - t0 < 10
    for way in ("--data PATH", "$GRU_TORCH_DATA", "../shared/data/", "--data sample"):
        assert way in line, way


def test_resume_without_a_checkpoint(tmp_path, capsys):
    status, line = call(cli.train_main, ["--data", "sample", "--out", str(tmp_path / "run"),
                                         "--resume"], capsys)
    assert status == 2 and "last.pt' does not exist" in line


def test_predict_checkpoint_errors(tmp_path, junk, capsys):
    status, line = call(cli.predict_main, ["--checkpoint", str(tmp_path / "none.pt"), "good"],
                        capsys)
    assert status == 2 and "none.pt' does not exist" in line
    status, line = call(cli.predict_main, ["--checkpoint", str(junk), "good"], capsys)
    assert status == 2 and "not a readable gru_torch checkpoint" in line
    torch.save({"version": train.CHECKPOINT_VERSION, "model": {}, "vocab": [],
                "config": {"model": {"hidden": []}}}, tmp_path / "bad.pt")
    status, line = call(cli.predict_main, ["--checkpoint", str(tmp_path / "bad.pt"), "good"], capsys)
    assert status == 2 and "does not load" in line


def test_export_errors(tmp_path, capsys):
    status, line = call(cli.export_main, ["--checkpoint", str(tmp_path / "none.pt")], capsys)
    assert status == 2 and "--onnx PATH, --pt2 PATH or both" in line
    status, line = call(cli.export_main, ["--checkpoint", str(tmp_path / "none.pt"), "--onnx",
                                          str(tmp_path / "m.onnx")], capsys)
    assert status == 2 and "does not exist" in line


def test_a_bad_cpu_capability_setting_is_one_line(tmp_path):
    """GRU_TORCH_CPU_CAPABILITY that names no instruction set this build and CPU can run."""
    import os

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--data",
                           "sample", "--epochs", "1", "--out", str(tmp_path / "run")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GRU_TORCH_CPU_CAPABILITY": "avx9"})
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert "GRU_TORCH_CPU_CAPABILITY: unknown CPU capability 'avx9'" in line
