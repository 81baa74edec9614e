#!/usr/bin/env python
"""The notebooks' comparison, reproduced: trains every notebook preset and the default
recipe with several seeds, then writes a report of their accuracy, speed and parameters,
with the notebooks' own figures and claims checked against the measurements.

  python scripts/compare_notebooks.py --data ../shared/data/aclImdb_v1-text.tar.gz
  python scripts/compare_notebooks.py --data ... --presets gru128 lstm128 --seeds 5
  python scripts/compare_notebooks.py --data sample --epochs 1 --limit-train 400   # a short run
  python scripts/compare_notebooks.py --collect       # the report from the finished runs only

Each run is `scripts/train.py --preset NAME --seed S` (the default recipe: `--cell gru`) in
its own process, into runs/notebooks/<name>/seed<S>/. A finished run also leaves a small
record beside the report (<out>/runs/<name>/seed<S>.json: its settings, CPU, threads,
commit, load average, metrics and history), which the repository keeps. A run whose
metrics.json exists with the same settings, or whose record does with the same settings
and CPU, is kept and skipped, so an interrupted comparison resumes where it stopped, also
in a fresh clone. Before training it says how long it expects to take, from the seconds per epoch
that scripts/epoch_seconds.py measured on this CPU (benchmarks/results/epoch-seconds-*.json).
Progress goes to the terminal and to runs/notebooks/compare.log.

The report: benchmarks/results/notebooks/report.md (--out), report.json, and three
pictures beside them: accuracy per preset with the notebooks' figures marked, accuracy
against training time, validation curves per notebook.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gru_torch import machine, ops, presets  # noqa: E402
from gru_torch.rnn_base import RNNBase  # noqa: E402
from gru_torch.train import pyplot  # noqa: E402

DEFAULT = "default"  # the default recipe: train.py --cell gru
RESULTS = ROOT / "benchmarks" / "results"
# Epochs an early-stopping preset is expected to run, for the time estimate only.
EXPECTED_EARLY_STOP_EPOCHS = 12
# A run's seconds per epoch are flagged as timed on a busy machine above this 1-minute
# load average (2 threads on the 2-core machine make about 2).
BUSY_LOAD = 2.5
log = logging.getLogger("compare_notebooks")


def run_names(chosen: list[str] | None) -> list[str]:
    return chosen or [*presets.PRESETS, DEFAULT]


def train_command(name: str, seed: int, args, out: Path) -> list[str]:
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"),
           *(["--cell", "gru"] if name == DEFAULT else ["--preset", name]),
           "--seed", str(seed), "--data", args.data, "--out", str(out)]
    for flag, value in (("--epochs", args.epochs), ("--limit-train", args.limit_train),
                        ("--limit-test", args.limit_test)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


PATH_OPTIONS = ("--data", "--out")


def settings(cmd: list[str]) -> list[str]:
    """What makes two runs the same run: the command without its interpreter and paths.

    The values of --data and --out are paths, absolute or relative: the same archive named
    two ways is the same run."""
    out, skip = [], False
    for c in cmd[2:]:
        if skip:
            skip = False
            continue
        out.append(c)
        skip = c in PATH_OPTIONS
    return out


def finished(out: Path, cmd: list[str], record: Path) -> bool:
    marker = out / "compare.json"
    if ((out / "metrics.json").is_file() and marker.is_file()
            and json.loads(marker.read_text()).get("settings") == settings(cmd)):
        return True
    if record.is_file():
        r = json.loads(record.read_text())
        return r.get("settings") == settings(cmd) and r.get("cpu") == machine.cpu_model()
    return False


def record_path(out: Path, name: str, seed: int) -> Path:
    """The record a finished run leaves beside the report."""
    return out / "runs" / name / f"seed{seed}.json"


def commit() -> str | None:
    """The checked-out commit, with "+changes" where the work tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty.strip() else "")


def write_record(path: Path, run: Path, cmd: list[str], load_start: float | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "settings": settings(cmd), "cpu": machine.cpu_model(),
        "threads": json.loads((run / "config.json").read_text()).get("threads"),
        "commit": commit(), "load_average": [load_start, machine.load_average()],
        "metrics": json.loads((run / "metrics.json").read_text()),
        "history": json.loads((run / "history.json").read_text())}, indent=1) + "\n")


def expected_epochs(name: str, args) -> int:
    if args.epochs is not None:
        return args.epochs
    if name == DEFAULT:
        return 5  # train.py's default
    p = presets.get(name)
    return min(p.epochs, EXPECTED_EARLY_STOP_EPOCHS) if p.early_stopping else p.epochs


def measured_epoch_seconds() -> tuple[dict[str, float], str | None]:
    """Fused seconds per epoch per preset on this CPU: each preset's figure from the newest
    epoch-seconds file of this CPU that has it (a file may hold some presets only); and
    the files' names, or ({}, None) where there is none."""
    cpu = machine.cpu_model()
    files = sorted(RESULTS.glob("epoch-seconds-*.json"), key=lambda p: p.stat().st_mtime,
                   reverse=True)
    seconds: dict[str, float] = {}
    used = []
    for f in files:
        meta = json.loads(f.read_text())
        if meta.get("cpu") != cpu:
            continue
        new = {r["preset"]: r["fused_epoch_s"] or r["baseline_epoch_s"]
               for r in meta["rows"] if r["preset"] not in seconds}
        if new:
            seconds.update(new)
            used.append(f.name)
    return seconds, (", ".join(used) if used else None)


def estimate(todo: list[tuple[str, int]], args) -> str:
    seconds, source = measured_epoch_seconds()
    if not todo:
        return "every run is finished already: nothing to train"
    if not source:
        return (f"{len(todo)} runs to train; no seconds per epoch measured on this CPU "
                f"({machine.cpu_model()}), so no time estimate (scripts/epoch_seconds.py "
                "measures them)")
    gru = seconds.get("gru128")
    scale = 1.0 if args.limit_train is None else min(1.0, args.limit_train / 25000)
    total, unknown = 0.0, []
    for name, _ in todo:
        # the default recipe has no row of its own: gru128's (a GRU of 128 too) stands in
        per_epoch = seconds.get(name if name != DEFAULT else "gru128", gru)
        if per_epoch is None:
            unknown.append(name)
            continue
        total += per_epoch * scale * expected_epochs(name, args) + 20  # + loading, testing
    note = f"; not estimated: {', '.join(sorted(set(unknown)))}" if unknown else ""
    return (f"{len(todo)} runs to train: expect about {total / 60:.0f} minutes (seconds per "
            f"epoch from {source}; early stopping taken as {EXPECTED_EARLY_STOP_EPOCHS} "
            f"epochs{note})")


# ---- the report

def collect(names: list[str], seeds: list[int], runs: Path, out: Path) -> list[dict]:
    """Per preset, the finished runs' figures: from runs/ where a run is there, else from
    its record of this CPU (out/runs/)."""
    rows = []
    for name in names:
        done, commits, loads = [], set(), []
        for s in seeds:
            run, rec = runs / name / f"seed{s}", record_path(out, name, s)
            if (run / "metrics.json").is_file():
                done.append((s, json.loads((run / "metrics.json").read_text()),
                             json.loads((run / "history.json").read_text())))
                marker = run / "compare.json"
                if rec.is_file() and marker.is_file():  # the record this run left: its commit
                    r = json.loads(rec.read_text())
                    if r.get("settings") == json.loads(marker.read_text()).get("settings"):
                        commits.add(r.get("commit") or "?")
                        loads += [v for v in r.get("load_average") or [] if v is not None]
            elif rec.is_file() and json.loads(rec.read_text()).get("cpu") == machine.cpu_model():
                r = json.loads(rec.read_text())
                done.append((s, r["metrics"], r["history"]))
                commits.add(r.get("commit") or "?")
                loads += [v for v in r.get("load_average") or [] if v is not None]
        if not done:
            continue
        accs = [m["test_accuracy"] for _, m, _ in done]
        p = presets.get(name) if name != DEFAULT else None
        model = presets.build(name) if p else None
        sd = statistics.stdev(accs) if len(accs) > 1 else None
        reported = p.reported if p else None
        epoch_s = [r["seconds"] for _, _, h in done for r in h]
        rows.append({
            "preset": name, "notebook": p.notebook if p else "-",
            "keras_params": p.keras_params if p else None,
            "params": presets.count_parameters(model) if model else None,
            "seeds": [s for s, _, _ in done], "accuracies": accs,
            "mean": statistics.mean(accs), "sd": sd, "reported": reported,
            "diff_sd": (statistics.mean(accs) - reported) / sd if reported and sd else None,
            "seconds_per_epoch": statistics.mean(epoch_s),
            "epochs": [m["epochs"] for _, m, _ in done],
            "train_seconds": statistics.mean(m["train_seconds"] for _, m, _ in done),
            "backends": sorted({str(m.get("recurrent_backend")) for _, m, _ in done}),
            "fused_ops": fused_ops(model),
            "val_curves": [[r.get("val_accuracy") for r in h] for _, _, h in done],
            "train_curves": [[r.get("accuracy") for r in h] for _, _, h in done],
            "commits": sorted(commits), "max_load": max(loads) if loads else None,
        })
    return rows


def fused_ops(model) -> list[str]:
    """Which fused op trains each recurrent layer of a preset's model: "GRU op" (the GRU
    with sigmoid gates and shared masks: its input projection and cell inside the GEMM's
    loop) or "family op" (every other cell: the same time loop for every cell). The
    default recipe's model (None here) is a plain GRU."""
    if model is None:
        return ["GRU op"]
    found = []
    for m in model.modules():
        if isinstance(m, RNNBase):
            cfg = m.training_config(torch.device("cpu"))
            op = "GRU op" if ops.gru_op_reason(cfg.cell, cfg.dropout_active, cfg.masks,
                                               cfg.input_dropout, cfg.directions) is None \
                else "family op"
            if op not in found:
                found.append(op)
    return found


def ran_on(r: dict) -> str:
    """The backend, and for the fused one which op: "fused (GRU op)"."""
    text = ", ".join(r["backends"])
    if r["backends"] == ["fused"] and r.get("fused_ops"):
        text += f" ({', '.join(r['fused_ops'])})"
    return text


def _row(rows, name):
    return next((r for r in rows if r["preset"] == name), None)


def _pct(v):
    return "-" if v is None else f"{v:.2%}"


def claims(rows: list[dict]) -> list[str]:
    """Each of the notebooks' claims, held or not, with the numbers."""
    lines = []

    def same_kind(a, b):
        return a["backends"] == b["backends"] == ["fused"]

    def ops_of(r):
        return " and ".join(r.get("fused_ops") or ["?"])

    for gru, lstm in (("gru128", "lstm128"), ("gru32x2", "lstm32x2")):
        g, l = _row(rows, gru), _row(rows, lstm)
        if not (g and l):
            continue
        faster = g["seconds_per_epoch"] < l["seconds_per_epoch"]
        sd = max(v for v in (g["sd"], l["sd"], 0.005) if v is not None)
        gap = g["mean"] - l["mean"]
        # "similar accuracy": the GRU not worse than the LSTM by more than 2 sd
        similar = gap >= -2 * sd
        if not same_kind(g, l):
            kind = (f"not a claim about the cells: they ran on {g['backends']} and "
                    f"{l['backends']}")
        elif g.get("fused_ops") != l.get("fused_ops"):
            kind = (f"both fused, but {gru} on the {ops_of(g)} and {lstm} on the {ops_of(l)}, "
                    f"which are not the same implementation: the speed is partly the ops'")
        else:
            kind = f"both on the {ops_of(g)}: the same time loop, so a claim about the cells"
        lines.append(
            f"- **GRUs train faster than LSTMs for similar accuracy** ({gru} against {lstm}): "
            f"{'held' if faster and similar else 'did not hold'}: {g['seconds_per_epoch']:.1f} "
            f"against {l['seconds_per_epoch']:.1f} s an epoch "
            f"({l['seconds_per_epoch'] / g['seconds_per_epoch']:.2f}x), accuracy "
            f"{_pct(g['mean'])} against {_pct(l['mean'])} ({abs(gap) * 100:.2f} points "
            f"{'higher' if gap >= 0 else 'lower'} for the GRU; 2 sd = {2 * sd * 100:.2f} points); "
            f"{kind}.")
    for gru, lstm in (("gru128", "lstm128"), ("gru32x2", "lstm32x2")):
        g, l = _row(rows, gru), _row(rows, lstm)
        if g and l and g["params"] and l["params"]:
            lines.append(f"- **GRUs have fewer parameters** ({gru} against {lstm}): "
                         f"{'held' if g['params'] < l['params'] else 'did not hold'}: "
                         f"{g['params']:,} against {l['params']:,}.")
    b, u = _row(rows, "bilstm32x2"), _row(rows, "lstm32x2")
    if b and u:
        ratio = b["seconds_per_epoch"] / u["seconds_per_epoch"]
        lines.append(f"- **A bidirectional RNN takes about twice the time** (bilstm32x2 against "
                     f"lstm32x2): {'held' if 1.6 <= ratio <= 2.4 else 'did not hold'}: "
                     f"{ratio:.2f}x ({b['seconds_per_epoch']:.1f} against "
                     f"{u['seconds_per_epoch']:.1f} s an epoch; 'about twice' taken as "
                     f"1.6x to 2.4x).")
    r = _row(rows, "rnn128")
    others = [x for x in (_row(rows, "gru128"), _row(rows, "lstm128")) if x]
    if r and others:
        worse = all(r["mean"] < o["mean"] for o in others)
        lines.append(f"- **A SimpleRNN does worse** (rnn128 against "
                     f"{' and '.join(o['preset'] for o in others)}): "
                     f"{'held' if worse else 'did not hold'}: {_pct(r['mean'])} against "
                     f"{', '.join(_pct(o['mean']) for o in others)}.")
    return lines


def plots(rows: list[dict], out: Path) -> list[str]:
    plt = pyplot()
    if plt is None:
        return []
    names = [r["preset"] for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.errorbar(xs, [r["mean"] * 100 for r in rows], [(r["sd"] or 0) * 100 for r in rows],
                fmt="o", capsize=4, label="gru_torch: mean ± sd over seeds")
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["accuracies"]), [a * 100 for a in r["accuracies"]], s=10,
                   color="gray", alpha=0.6)
    rep = [(i, r["reported"] * 100) for i, r in enumerate(rows) if r["reported"]]
    if rep:
        ax.scatter(*zip(*rep), marker="x", s=80, color="red", label="the notebook's figure")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("IMDB test accuracy per preset")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 5))
    for k, r in enumerate(rows):
        ax.scatter(r["train_seconds"] / 60, r["mean"] * 100)
        # labels alternate above and below their points, so that close points stay legible
        ax.annotate(r["preset"], (r["train_seconds"] / 60, r["mean"] * 100), fontsize=8,
                    xytext=(5, 4 if k % 2 == 0 else -11), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())  # (minor labels collide on a log axis)
    lo, hi = ax.get_xlim()
    ax.set_xticks([t for t in (0.5, 1, 2, 3, 5, 10, 20, 30, 60) if lo <= t <= hi])
    ax.set_xlabel("training time, minutes (mean over seeds, log scale)")
    ax.set_ylabel("test accuracy (%, mean over seeds)")
    ax.set_title("Accuracy against training time")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out / "accuracy-vs-time.png", dpi=110)
    plt.close(fig)

    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["notebook"] if r["notebook"] != "-" else "default", []).append(r)
    cols = min(3, len(groups))
    nrows = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (nb, rs) in zip(flat, sorted(groups.items())):
        # a notebook that kept no validation split (B, D: trained on all 25,000 reviews)
        # shows its training accuracy, dashed, and says so
        has_val = any(v is not None for r in rs for c in r["val_curves"] for v in c)
        for k, r in enumerate(rs):
            curves = r["val_curves"] if has_val else r.get("train_curves", [])
            for j, curve in enumerate(curves):
                ys = [v * 100 for v in curve if v is not None]
                if ys:
                    ax.plot(range(1, len(ys) + 1), ys, color=f"C{k}", alpha=0.8,
                            linestyle="-" if has_val else "--",
                            label=r["preset"] if j == 0 else None)
        title = f"notebook {nb}" if nb != "default" else "default recipe"
        ax.set_title(title if has_val else f"{title}: training accuracy\n(no validation split)",
                     fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)" if has_val else "training accuracy (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in flat[len(groups):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out / "validation-curves.png", dpi=110)
    plt.close(fig)
    return ["accuracy.png", "accuracy-vs-time.png", "validation-curves.png"]


def report(rows: list[dict], out: Path, seeds: list[int], args) -> str:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": machine.cpu_model(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "seeds": seeds, "epochs": args.epochs,
            "limit_train": args.limit_train, "limit_test": args.limit_test, "rows": rows}
    (out / "report.json").write_text(json.dumps(meta, indent=1) + "\n")
    pictures = plots(rows, out)
    short = any(v is not None for v in (args.epochs, args.limit_train, args.limit_test))
    lines = ["# The notebooks' comparison, reproduced", "",
             f"{meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}; seeds "
             f"{', '.join(map(str, seeds))}; `python scripts/compare_notebooks.py"
             f"{' --data ' + args.data if args.data else ''}`."
             + (" A shortened run (--epochs / --limit-train / --limit-test): not the "
                "notebooks' training." if short else ""), "",
             "| preset | notebook | Keras params | ours | test accuracy (mean ± sd) | "
             "notebook's | difference in sd | s/epoch | epochs | ran on |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sd = f" ± {r['sd']:.2%}" if r["sd"] is not None else " (one seed)"
        diff = "-" if r["diff_sd"] is None else f"{r['diff_sd']:+.1f}"
        kp = "-" if r["keras_params"] is None else f"{r['keras_params']:,}"
        ours = "-" if r["params"] is None else f"{r['params']:,}"
        lines.append(f"| {r['preset']} | {r['notebook']} | {kp} | {ours} | {_pct(r['mean'])}{sd} "
                     f"| {_pct(r['reported'])} | {diff} | {r['seconds_per_epoch']:.1f} | "
                     f"{', '.join(map(str, r['epochs']))} | {ran_on(r)} |")
    lines += ["", "Each seed's test accuracy: " + "; ".join(
        f"{r['preset']} {', '.join(f'{a:.2%}' for a in r['accuracies'])}" for r in rows)]
    commits = sorted({c for r in rows for c in r.get("commits", [])})
    if commits:
        lines += ["", f"Trained at commit{'s' * (len(commits) > 1)} {', '.join(commits)} "
                  "(each run's record in runs/ names its own)."]
    busy = [r["preset"] for r in rows if (r.get("max_load") or 0) > BUSY_LOAD]
    if busy:
        lines += ["", f"Seconds per epoch of {', '.join(busy)}: timed while other work ran "
                  f"(a load average over {BUSY_LOAD} during a run); "
                  "scripts/epoch_seconds.py times the presets alone."]
    lines += ["", "## The notebooks' claims", ""]
    lines += claims(rows) or ["- (the presets that the claims compare did not run)"]
    if pictures:
        lines += ["", "## Pictures", ""] + [f"![{p}]({p})" for p in pictures]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="IMDB archive or folder, or 'sample' (needed unless --collect)")
    ap.add_argument("--presets", nargs="*", choices=[*presets.PRESETS, DEFAULT],
                    help=f"presets, and '{DEFAULT}' for the default recipe (default: all)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--epochs", type=int, help="epochs per run (default: each preset's own)")
    ap.add_argument("--limit-train", type=int)
    ap.add_argument("--limit-test", type=int)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "notebooks")
    ap.add_argument("--out", type=Path, default=RESULTS / "notebooks", help="the report's folder")
    ap.add_argument("--collect", action="store_true", help="train nothing: report the finished runs")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    if not args.collect and not args.data:
        ap.error("--data is required unless --collect")
    args.runs.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout),
                                  logging.FileHandler(args.runs / "compare.log")])
    names, seeds = run_names(args.presets), list(range(args.seeds))
    if not args.collect:
        plan = [(n, s) for n in names for s in seeds]
        todo = [(n, s) for n, s in plan
                if not finished(args.runs / n / f"seed{s}",
                                train_command(n, s, args, args.runs / n / f"seed{s}"),
                                record_path(args.out, n, s))]
        log.info("compare_notebooks: %d runs, %d finished already; %s", len(plan),
                 len(plan) - len(todo), estimate(todo, args))
        for k, (name, seed) in enumerate(todo, 1):
            out = args.runs / name / f"seed{seed}"
            cmd = train_command(name, seed, args, out)
            log.info("[%d/%d] %s seed %d: %s", k, len(todo), name, seed, " ".join(cmd))
            t0, load = time.perf_counter(), machine.load_average()
            proc = subprocess.run(cmd)
            if proc.returncode != 0:
                log.error("[%d/%d] %s seed %d failed (exit %d); see %s", k, len(todo), name,
                          seed, proc.returncode, out / "train.log")
                return 1
            (out / "compare.json").write_text(json.dumps({"settings": settings(cmd)}) + "\n")
            write_record(record_path(args.out, name, seed), out, cmd, load)
            metrics = json.loads((out / "metrics.json").read_text())
            log.info("[%d/%d] %s seed %d: test accuracy %.2f%% in %.0f s", k, len(todo), name,
                     seed, 100 * metrics["test_accuracy"], time.perf_counter() - t0)
    rows = collect(names, seeds, args.runs, args.out)
    if not rows:
        log.error("no finished runs in %s", args.runs)
        return 1
    text = report(rows, args.out, seeds, args)
    print(text)
    log.info("report: %s", args.out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
