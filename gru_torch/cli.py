"""Command lines: `gru-torch-train` (scripts/train.py), `gru-torch-predict` and
`gru-torch-export`.

An error a user can cause and mend (no data, a corrupt archive, an unknown preset, a
missing or invalid checkpoint, a bad argument) prints one line, `error: ...`, on stderr
and exits with status 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import backends, machine, presets
from .capability import cpu_capability
from .cellspec import DROPOUT_MASKS, RECURRENT_ACTIVATIONS
from .data import archive, imdb
from .data.archive import DataError
from .data.batching import ReviewBatches
from .data.text import tokenize
from .export import ExportError
from .rnn_base import RNNBase
from .models import ModelConfig, SentimentClassifier
from .progress import STATUS_EVERY_S, LogHandler, RunLog
from .train import (CheckpointError, EarlyStopping, RunOptions, evaluate, fit, load_checkpoint,
                    make_optimizer, model_from_checkpoint, summary)

START, OOV, INDEX_FROM = 1, 2, 3



def peak_rss_mb() -> float | None:
    """The process's peak resident memory so far, in MiB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)

def default_recipe(cell: str, bidirectional: bool) -> presets.Preset:
    """The project's own recipe for a cell (used without --preset): length-aware batches
    of post-padded reviews, a 20,000-word vocabulary, dropout around the recurrent layer,
    and the max of the outputs over each review beside its last state."""
    return presets.Preset(
        f"{'bi' if bidirectional else ''}{cell}-default", "-",
        ModelConfig(vocab_size=20000, embed_dim=128, embed_dropout=0.3, cell=cell, hidden=[128],
                    bidirectional=bidirectional, head_dropout=0.3, pooling="last+max"),
        num_words=20000, maxlen=400, batch_size=64, epochs=4, validation_split=0.1,
        early_stopping={"monitor": "val_accuracy", "patience": 2})


def chosen_preset(args) -> presets.Preset:
    """--preset NAME, else the default recipe for --cell; --init, --recurrent-dropout,
    --dropout-masks, --recurrent-activation and --backend override its model's."""
    preset = presets.get(args.preset) if args.preset else default_recipe(args.cell, args.bidirectional)
    changes = {k: v for k, v in (("init", args.init), ("recurrent_dropout", args.recurrent_dropout),
                                 ("dropout_masks", getattr(args, "dropout_masks", None)),
                                 ("recurrent_activation",
                                  getattr(args, "recurrent_activation", None)),
                                 ("backend", args.backend)) if v is not None}
    if changes.get("recurrent_activation") and preset.model.cell == "rnn":
        raise UsageError("--recurrent-activation: a SimpleRNN has no gates (the preset's cell "
                         "is rnn)")
    if changes:
        preset = dataclasses.replace(preset, model=dataclasses.replace(preset.model, **changes))
    return preset


class UsageError(Exception):
    """A request the command line cannot carry out, said in one line."""


EXPECTED_ERRORS = (DataError, CheckpointError, ExportError, UsageError)


def _cpu_capability() -> str | None:
    """The fused CPU op's instruction set; a bad GRU_TORCH_CPU_CAPABILITY is a usage error."""
    try:
        return cpu_capability()
    except RuntimeError as e:
        if "GRU_TORCH_CPU_CAPABILITY" not in str(e):
            raise
        raise UsageError(str(e).splitlines()[0]) from None


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, as the other expected errors."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _guarded(run, argv) -> int:
    """Runs a command line; an expected error becomes one line and status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(argv)
    except EXPECTED_ERRORS as e:
        if "--debug" in argv:
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def _add_debug(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")


def _parse_train(argv):
    ap = _Parser(description="Train an IMDB sentiment classifier.")
    ap.add_argument("--cell", choices=["gru", "lstm", "rnn"], default="gru")
    ap.add_argument("--bidirectional", action="store_true")
    ap.add_argument("--preset", choices=list(presets.PRESETS), metavar="NAME",
                    help="a notebook model (see --list-presets)")
    ap.add_argument("--list-presets", action="store_true")
    ap.add_argument("--data", help="IMDB archive or aclImdb/ folder, or 'sample' (default: "
                                   "$GRU_TORCH_DATA, ../shared/data/ beside the checkout, the "
                                   "cache, or a download)")
    ap.add_argument("--out", type=Path, help="output folder (default runs/<name>)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--limit-train", type=int, help="use the first N training reviews")
    ap.add_argument("--limit-test", type=int, help="evaluate on the first N test reviews")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-bucket", action="store_true", help="do not batch by length")
    ap.add_argument("--recurrent-dropout", type=float, metavar="P",
                    help="override the model's recurrent_dropout")
    ap.add_argument("--dropout-masks", choices=list(DROPOUT_MASKS),
                    help="override the model's dropout masks: one shared by the gates, or one "
                         "per gate (as the preset's Keras drew them; the fused op runs shared "
                         "masks only, for now)")
    ap.add_argument("--recurrent-activation", choices=list(RECURRENT_ACTIVATIONS),
                    help="override the GRU's or LSTM's gate function (the fused op runs "
                         "sigmoid only, for now)")
    ap.add_argument("--init", choices=["torch", "keras"],
                    help="initializers (default: keras for a --preset, torch otherwise)")
    ap.add_argument("--backend", choices=backends.BACKENDS,
                    help="how the recurrent layers run (default auto: the fused op where it is built)")
    ap.add_argument("--threads", type=int,
                    help="torch.set_num_threads (default: the physical cores, shared among "
                         "the processes of a torchrun)")
    ap.add_argument("--log-every", type=float, default=STATUS_EVERY_S, metavar="S",
                    help="outside a terminal, a status line every S seconds (default "
                         f"{STATUS_EVERY_S:.0f})")
    ap.add_argument("--device", choices=["cpu", "cuda"],
                    help="default: cuda when available (the local rank's GPU under torchrun)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--deterministic", action="store_true",
                    help="torch.use_deterministic_algorithms(True)")
    ap.add_argument("--no-flush-denormal", dest="flush_denormal", action="store_false",
                    help="keep denormal numbers (by default they are flushed to zero on every "
                         "CPU thread, as TensorFlow does: a gradient decaying into them makes "
                         "Intel cores many times slower)")
    _add_debug(ap)
    args = ap.parse_args(argv)
    for name in ("epochs", "batch_size", "limit_train", "limit_test", "threads"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive, got {v}")
    if args.recurrent_dropout is not None and not 0 <= args.recurrent_dropout < 1:
        ap.error(f"--recurrent-dropout must be in [0, 1), got {args.recurrent_dropout}")
    if not args.log_every > 0:
        ap.error(f"--log-every must be positive, got {args.log_every}")
    return args


def set_threads(requested: int | None, processes: int = 1) -> int:
    """--threads, else $OMP_NUM_THREADS as torch read it, else the physical cores shared
    among this machine's processes of the run."""
    if requested is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    n = requested or max(1, machine.physical_cores() // processes)
    torch.set_num_threads(n)
    return n


def config_line(config: dict) -> str:
    """The run's config in one line (config.json holds all of it)."""
    m = config["model"]
    model = f"{'bi' if m['bidirectional'] else ''}{m['cell']} {'x'.join(map(str, m['hidden']))}"
    parts = [config["preset"], f"model {model}", f"words {config['num_words']}",
             f"maxlen {config['maxlen']}",
             f"{config['optimizer']} lr {config['lr'] or 'default'}",
             f"batch {config['batch_size']}", f"epochs {config['epochs']}",
             f"seed {config['seed']}", f"data {config['data'] or 'auto'}"]
    parts += [f"{k.replace('_', '-')} {config[k]}" for k in ("limit_train", "limit_test")
              if config[k]]
    parts += [f"device {config['device']}", f"threads {config['threads']}"]
    parts += [k for k in ("bf16", "compile") if config[k]]
    if not config.get("flush_denormal", True):
        parts.append("denormals kept")
    if config["world_size"] > 1:
        parts.append(f"{config['world_size']} processes")
    return "config: " + ", ".join(parts)


def train_main(argv=None) -> int:
    return _guarded(_train, argv)


def _train(argv) -> int:
    args = _parse_train(argv)
    if args.list_presets:
        for p in presets.PRESETS.values():
            acc = f"{p.reported:.2%}" if p.reported else "-"
            print(f"{p.name:<16} notebook {p.notebook}  {p.keras_params:>9,} params  "
                  f"reported {acc:>7}  {p.note}")
        return 0
    preset = chosen_preset(args)
    epochs = args.epochs or preset.epochs
    batch_size = args.batch_size or preset.batch_size
    out = args.out or Path("runs") / preset.name
    rank, world, local = (int(os.environ.get(k, d)) for k, d in
                          (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    use_cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if args.bf16 and device.type != "cuda":
        raise UsageError("--bf16 needs --device cuda (bf16 autocast is for the GPU)")
    resume = load_checkpoint(out / "last.pt") if args.resume else None
    if args.data is not None:
        archive.find_source(args.data)  # a wrong path fails before the run folder is made
    log = RunLog(enabled=rank == 0)
    log.open(out / "train.log", append=args.resume)
    library_log = logging.getLogger("gru_torch")
    handler = LogHandler(log)
    library_log.addHandler(handler)
    library_log.setLevel(logging.INFO)
    library_log.propagate = False
    try:
        return _train_run(args, preset, epochs, batch_size, out, device, resume, log,
                          (rank, world, local))
    except EXPECTED_ERRORS as e:
        log(f"error: {e}", console=False)
        raise
    except KeyboardInterrupt:
        log(f"interrupted; `--resume` continues from {out / 'last.pt'} where it exists")
        return 130
    finally:
        library_log.removeHandler(handler)
        library_log.propagate = True
        log.close()


def _train_run(args, preset, epochs, batch_size, out, device, resume, log, ranks) -> int:
    rank, world, local = ranks
    threads = set_threads(args.threads, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    use_cuda = device.type == "cuda"
    if world > 1:
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(device)
    opts = RunOptions(device=device, bf16=args.bf16, is_main=rank == 0, log_every=args.log_every,
                      flush_denormal=args.flush_denormal)
    # Every model reads each row's state at its length, except the raw-ids notebook (B),
    # which is reproduced as Keras ran it: state read after the post-padding.
    use_lengths = preset.model.input_mode != "raw"
    config = {"preset": preset.name, "model": preset.model.to_dict(), "num_words": preset.num_words,
              "maxlen": preset.maxlen, "optimizer": preset.optimizer, "lr": args.lr,
              "batch_size": batch_size, "epochs": epochs,
              "validation_split": preset.validation_split, "early_stopping": preset.early_stopping,
              "use_lengths": use_lengths, "seed": args.seed, "data": args.data,
              "limit_train": args.limit_train, "limit_test": args.limit_test,
              "device": str(device), "world_size": world, "bf16": args.bf16,
              "compile": args.compile, "threads": threads,
              "flush_denormal": args.flush_denormal,
              "cpu_capability": _cpu_capability() if device.type == "cpu" else None}
    log(f"{config_line(config)} (all of it in {out / 'config.json'})")
    if rank == 0:
        (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    note = machine.busy_note(threads)
    if note:
        log(note)

    (x_train, y_train), (x_test, y_test) = imdb.load_data(args.data, num_words=preset.num_words)
    word_index = imdb.get_word_index(args.data)
    vocab = sorted(word_index, key=word_index.get)[: preset.num_words - INDEX_FROM - 1]
    if args.limit_train:
        x_train, y_train = x_train[: args.limit_train], y_train[: args.limit_train]
    if args.limit_test:
        x_test, y_test = x_test[: args.limit_test], y_test[: args.limit_test]
    n_val = int(len(x_train) * preset.validation_split)  # Keras: the last fraction
    pad_to = None if use_lengths else preset.maxlen
    batches = lambda x, y, shuffle: ReviewBatches(  # noqa: E731
        x, y, batch_size, maxlen=preset.maxlen, shuffle=shuffle,
        bucket=shuffle and use_lengths and not args.no_bucket, seed=args.seed, pad_to=pad_to,
        rank=rank if shuffle else 0, world_size=world if shuffle else 1)
    train = batches(x_train[: len(x_train) - n_val], y_train[: len(x_train) - n_val], True)
    val = batches(x_train[len(x_train) - n_val:], y_train[len(x_train) - n_val:], False) if n_val else None
    test = batches(x_test, y_test, False)
    log(f"data: {len(x_train) - n_val:,} training, {n_val:,} validation and {len(x_test):,} "
        f"test reviews; {len(train):,} training batches of {batch_size} an epoch")

    model = SentimentClassifier(preset.model)
    log(summary(model), console=False)
    log(f"model: {sum(p.numel() for p in model.parameters()):,} parameters "
        f"(the layer table is in {out / 'train.log'})")
    model.to(device)
    recurrent_backend = training_backend(model, device)
    stopper = EarlyStopping(**preset.early_stopping) if preset.early_stopping and val else None
    if resume is not None:
        model.load_state_dict(resume["model"])
    optimizer = make_optimizer(preset.optimizer, model.parameters(), args.lr)
    runner = model
    if world > 1:
        runner = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local] if use_cuda else None)
    if args.compile:
        runner = torch.compile(runner)
    t0 = time.perf_counter()
    history = fit(runner, optimizer, train, val, epochs, out, config, vocab, stopper,
                  use_lengths, resume, log=log, opts=opts)
    train_seconds = time.perf_counter() - t0 + sum(
        r["seconds"] for r in (resume or {}).get("history", []))
    result = evaluate(model, test, use_lengths, progress="test", opts=opts, log=log)
    metrics = {"test_accuracy": result["accuracy"], "test_loss": result["loss"],
               "epochs": len(history.rows), "train_seconds": round(train_seconds, 2),
               "backend": preset.model.backend, "recurrent_backend": recurrent_backend,
               "peak_rss_mb": peak_rss_mb()}
    if rank == 0:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        history.test_accuracy = result["accuracy"]
        history.plot(out / "history.png")
    log("test:", json.dumps(metrics))
    log(f"model: {out / 'best.pt'}; log, config, history and plot: {out}/ (train.log, "
        "config.json, history.json, history.png, metrics.json)")
    log(f"classify text: python scripts/predict.py --checkpoint {out / 'best.pt'} "
        '"A wonderful film."')
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def training_backend(model: torch.nn.Module, device: torch.device) -> str | None:
    """The backends the model's recurrent layers train with on `device` (None without
    any); a forced backend that cannot run them stops the run before it trains."""
    layers = [m for m in model.modules() if isinstance(m, RNNBase)]
    try:
        used = {backends.resolve(m.backend, m.training_config(device)) for m in layers}
    except RuntimeError as e:
        raise SystemExit(str(e)) from None
    return ",".join(sorted(used)) or None


def encode(text: str, vocab: list[str], num_words: int, maxlen: int | None) -> list[int]:
    rank = {w: i + 1 for i, w in enumerate(vocab)}
    ids = [START] + [rank[w] + INDEX_FROM if w in rank and rank[w] + INDEX_FROM < num_words
                     else OOV for w in tokenize(text)]
    return ids[-maxlen:] if maxlen else ids


def predict_main(argv=None) -> int:
    return _guarded(_predict, argv)


def _predict(argv) -> int:
    ap = _Parser(description="Classify review text with a trained checkpoint.")
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--json", action="store_true", help="print a JSON list")
    _add_debug(ap)
    ap.add_argument("text", nargs="+")
    args = ap.parse_args(argv)
    for i, text in enumerate(args.text, 1):
        if not text.strip():
            ap.error(f"text {i} of {len(args.text)} is empty; give the review's words")
    state = load_checkpoint(args.checkpoint)
    model, cfg = model_from_checkpoint(state), state["config"]
    rows = []
    with torch.no_grad():
        for text in args.text:
            ids = encode(text, state["vocab"], cfg["num_words"], cfg["maxlen"])
            x = torch.tensor([ids])
            p = torch.sigmoid(model(x, torch.tensor([len(ids)]) if cfg["use_lengths"] else None))
            rows.append({"text": text, "positive_probability": float(p),
                         "label": "positive" if float(p) >= 0.5 else "negative"})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['label']:<8} {r['positive_probability']:.3f}  {r['text']}")
    return 0


def export_main(argv=None) -> int:
    return _guarded(_export, argv)


def _export(argv) -> int:
    from . import export

    ap = _Parser(description="Export a trained checkpoint for deployment: ONNX, with ONNX's "
                             "own GRU, LSTM and RNN operators, and/or a torch.export program.")
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--onnx", type=Path, help="write an ONNX file (and its vocabulary beside "
                                              "it, as .vocab.json)")
    ap.add_argument("--pt2", type=Path, help="write a torch.export program (torch.export.save)")
    ap.add_argument("--no-check", action="store_true",
                    help="do not run the ONNX file in ONNX Runtime against PyTorch")
    _add_debug(ap)
    args = ap.parse_args(argv)
    if args.onnx is None and args.pt2 is None:
        ap.error("give --onnx PATH, --pt2 PATH or both")
    state = load_checkpoint(args.checkpoint)
    model, cfg = model_from_checkpoint(state), state["config"]
    inputs, dims = export.classifier_inputs(model, use_lengths=cfg["use_lengths"])
    names = ["ids", "lengths"][:len(inputs)]
    if args.pt2 is not None:
        program = export.export_program(model, inputs, dims)
        args.pt2.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, args.pt2)
        print(f"wrote {args.pt2}: torch.export program (gru_torch.export.load_program loads it; "
              "run its module() under torch.no_grad())")
    if args.onnx is not None:
        export.to_onnx(model, inputs, args.onnx, dims, names, ["logits"])
        vocab_path = args.onnx.with_suffix(".vocab.json")
        vocab_path.write_text(json.dumps({
            "vocab": state["vocab"], "num_words": cfg["num_words"], "maxlen": cfg["maxlen"],
            "start": START, "oov": OOV, "index_from": INDEX_FROM,
            "use_lengths": cfg["use_lengths"]}))
        print(f"wrote {args.onnx}: inputs {' and '.join(names)} (int64, [batch, time] and "
              "[batch]), output logits [batch] (sigmoid gives the positive probability); "
              f"vocabulary and id conventions in {vocab_path}")
        if not args.no_check:
            err = export.onnx_max_error(model, args.onnx, use_lengths=cfg["use_lengths"])
            print("not checked: onnxruntime is not installed" if err is None else
                  f"checked: ONNX Runtime matches PyTorch to {err:.1e} on random batches")
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
