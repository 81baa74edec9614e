"""Command lines: `gru-torch-train` (scripts/train.py) and `gru-torch-predict`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import backends, presets
from .data import imdb
from .data.batching import ReviewBatches
from .data.text import tokenize
from .gru import GRU
from .models import ModelConfig, SentimentClassifier
from .train import (EarlyStopping, RunOptions, evaluate, fit, load_checkpoint,
                    make_optimizer, model_from_checkpoint, summary)

START, OOV, INDEX_FROM = 1, 2, 3


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
    """--preset NAME, else the default recipe for --cell; --init, --recurrent-dropout and
    --backend override its model's."""
    preset = presets.get(args.preset) if args.preset else default_recipe(args.cell, args.bidirectional)
    changes = {k: v for k, v in (("init", args.init), ("recurrent_dropout", args.recurrent_dropout),
                                 ("backend", args.backend)) if v is not None}
    if changes:
        preset = dataclasses.replace(preset, model=dataclasses.replace(preset.model, **changes))
    return preset


def _parse_train(argv):
    ap = argparse.ArgumentParser(description="Train an IMDB sentiment classifier.")
    ap.add_argument("--cell", choices=["gru", "lstm", "rnn"], default="gru")
    ap.add_argument("--bidirectional", action="store_true")
    ap.add_argument("--preset", help="a notebook model (see --list-presets)")
    ap.add_argument("--list-presets", action="store_true")
    ap.add_argument("--data", help="IMDB archive or aclImdb/ folder (default: $GRU_TORCH_DATA, "
                                   "the cache, or a download)")
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
    ap.add_argument("--init", choices=["torch", "keras"],
                    help="initializers (default: keras for a --preset, torch otherwise)")
    ap.add_argument("--backend", choices=backends.BACKENDS,
                    help="how the GRU layers run (default auto: the fused op where it is built)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--device", choices=["cpu", "cuda"],
                    help="default: cuda when available (the local rank's GPU under torchrun)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--deterministic", action="store_true",
                    help="torch.use_deterministic_algorithms(True)")
    args = ap.parse_args(argv)
    for name in ("epochs", "batch_size", "limit_train", "limit_test", "threads"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive, got {v}")
    if args.recurrent_dropout is not None and not 0 <= args.recurrent_dropout < 1:
        ap.error(f"--recurrent-dropout must be in [0, 1), got {args.recurrent_dropout}")
    return args


def train_main(argv=None) -> int:
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
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    rank, world, local = (int(os.environ.get(k, d)) for k, d in
                          (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    use_cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if args.bf16 and device.type != "cuda":
        raise SystemExit("--bf16 needs --device cuda (bf16 autocast is for the GPU)")
    if world > 1:
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(device)
    opts = RunOptions(device=device, bf16=args.bf16, is_main=rank == 0)
    log = print if rank == 0 else (lambda *a, **k: None)
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
              "compile": args.compile}
    log("config:", json.dumps(config, indent=1))

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

    model = SentimentClassifier(preset.model)
    log(summary(model))
    model.to(device)
    gru_backend = training_backend(model, device)
    stopper = EarlyStopping(**preset.early_stopping) if preset.early_stopping and val else None
    resume = None
    if args.resume:
        resume = load_checkpoint(out / "last.pt")
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
    result = evaluate(model, test, use_lengths, progress="test", opts=opts)
    metrics = {"test_accuracy": result["accuracy"], "test_loss": result["loss"],
               "epochs": len(history.rows), "train_seconds": round(train_seconds, 2),
               "backend": preset.model.backend, "gru_backend": gru_backend}
    if rank == 0:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log("test:", json.dumps(metrics))
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def training_backend(model: torch.nn.Module, device: torch.device) -> str | None:
    """The backend the model's GRU layers train with on `device` (None without GRU
    layers); a forced backend that cannot run them stops the run before it trains."""
    grus = [m for m in model.modules() if isinstance(m, GRU)]
    try:
        used = {backends.resolve(g.backend, backends.Config(device, g.weight_ih_l0.dtype,
                                                            g.reset_after, g.recurrent_dropout > 0))
                for g in grus}
    except RuntimeError as e:
        raise SystemExit(str(e)) from None
    return ",".join(sorted(used)) or None


def encode(text: str, vocab: list[str], num_words: int, maxlen: int | None) -> list[int]:
    rank = {w: i + 1 for i, w in enumerate(vocab)}
    ids = [START] + [rank[w] + INDEX_FROM if w in rank and rank[w] + INDEX_FROM < num_words
                     else OOV for w in tokenize(text)]
    return ids[-maxlen:] if maxlen else ids


def predict_main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Classify review text with a trained checkpoint.")
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--json", action="store_true", help="print a JSON list")
    ap.add_argument("text", nargs="+")
    args = ap.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(train_main())
