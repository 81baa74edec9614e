"""scripts/check_readme.py finds every README snippet; CI runs them all (--quick)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_readme", ROOT / "scripts" / "check_readme.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_every_fence_is_run_or_marked_text(check):
    found = check.snippets((ROOT / "README.md").read_text())
    assert {s.lang for s in found} <= {"python", "sh", "text"}
    shell = "".join(s.code for s in found if s.lang == "sh")
    # the first screen's two commands, and the by-hand path
    assert "make train" in shell and "make test" in shell
    assert "pip install --no-build-isolation ." in shell and "python scripts/train.py" in shell
    assert "scripts/benchmark.py --shapes" in shell and "scripts/export.py" in shell
    first = next(s for s in found if s.lang == "sh")
    assert first.heading == "Quick start" and first.code.split()[:2] == ["make", "train"]


def test_every_shell_line_of_the_readme_is_one_command(check):
    """check_readme runs a shell fence line by line: a line continued with a backslash
    cannot be split into words, and would stop CI with a traceback."""
    for s in check.snippets((ROOT / "README.md").read_text()):
        if s.lang == "sh":
            for line in s.code.splitlines():
                assert not line.rstrip().endswith("\\"), f"README.md:{s.line}: {line}"
            check.shell_script(s.code, quick=True)
    with pytest.raises(ValueError):
        check.shell_script("python scripts/benchmark.py --loss final \\\n    --repeats 7\n", quick=True)


def test_quick_mode_shortens_runs_and_leaves_setup_to_ci(check):
    q = check.quick_line
    assert q("make test     # the suite") is None
    assert q("pip install -r requirements-dev.txt") is None
    assert q("python3 -m venv .venv") is None
    assert q("make train    # train") == f'make train TRAIN_ARGS="{check.QUICK_TRAIN}"'
    assert q("python scripts/train.py --preset gru128").endswith(check.QUICK_TRAIN)
    assert q("make bench").endswith(f'BENCH_ARGS="{check.QUICK_BENCH}"')
    assert q('python scripts/benchmark.py --shapes "8,20,4,8" --no-save') == \
        'python scripts/benchmark.py --shapes "8,20,4,8" --no-save'
    assert q("GRU_TORCH_CPU_POOL_MB=0 python scripts/benchmark.py --mode alternate").endswith(
        check.QUICK_BENCH), "an environment assignment before the command"
    assert q('python scripts/benchmark.py --cell lstm --shapes "32,200,128,128" --repeats 7'
             ).endswith(check.QUICK_BENCH), "a recorded run's shapes, shortened"
    assert q(". .venv/bin/activate") == ". .venv/bin/activate"
    assert q("pip install --no-build-isolation .", skip_setup=False) == \
        "pip install --no-build-isolation ."  # --short: a fresh clone's set-up, as written
    assert q("python scripts/predict.py --checkpoint runs/gru/best.pt \"A wonderful film.\"") == \
        'python scripts/predict.py --checkpoint runs/gru/best.pt "A wonderful film."'


def test_unclosed_fence_is_an_error(check):
    with pytest.raises(ValueError, match="unclosed"):
        check.snippets("# x\n```sh\nmake train\n")


def test_use_snippet_runs(check, tmp_path):
    use = next(s for s in check.snippets((ROOT / "README.md").read_text())
               if s.lang == "python" and s.heading == "Use")
    proc = subprocess.run([sys.executable, "-c", use.code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
