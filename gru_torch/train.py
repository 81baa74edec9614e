"""Training: fit / evaluate / predict, early stopping, checkpoints, history.

Checkpoints are plain dicts of tensors and Python values (loadable with
torch.load(weights_only=True)); each holds the model config and the vocabulary, so a
checkpoint alone can classify raw text.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .denormals import flush_denormal
from .models import ModelConfig, SentimentClassifier
from .progress import STATUS_EVERY_S, Progress

CHECKPOINT_VERSION = 1

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not a gru_torch checkpoint."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    pass


def make_optimizer(name: str, params, lr: float | None = None) -> torch.optim.Optimizer:
    """Keras's defaults: Adam(1e-3, eps 1e-7) and RMSprop(1e-3, rho 0.9, eps 1e-7)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr or 1e-3, betas=(0.9, 0.999), eps=1e-7)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr or 1e-3, alpha=0.9, eps=1e-7)
    raise ValueError(f"optimizer must be 'adam' or 'rmsprop', got {name!r}")


@dataclass
class EarlyStopping:
    monitor: str = "val_accuracy"
    patience: int = 3
    restore_best: bool = True
    best: float = -math.inf
    best_epoch: int = -1
    wait: int = 0

    def mode_sign(self) -> float:
        return -1.0 if "loss" in self.monitor else 1.0

    def update(self, epoch: int, logs: dict) -> tuple[bool, bool]:
        """-> (improved, stop)."""
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, which the logs lack: "
                           f"{sorted(logs)}")
        value = self.mode_sign() * logs[self.monitor]
        if value > self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True, False
        self.wait += 1
        return False, self.wait >= self.patience


@dataclass
class History:
    rows: list[dict] = field(default_factory=list)
    title: str = ""                      # names the run on the plot
    test_accuracy: float | None = None   # drawn on the plot once known

    def write(self, out: Path) -> None:
        (out / "history.json").write_text(json.dumps(self.rows, indent=1))
        if self.rows:
            with open(out / "history.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(self.rows[0]))
                w.writeheader()
                w.writerows(self.rows)
        self.plot(out / "history.png")

    def plot(self, path: Path) -> bool:
        """Writes the figure to path; without matplotlib it says so once, returns False."""
        fig = self.figure()
        if fig is None:
            return False
        fig.savefig(path, dpi=100)
        pyplot().close(fig)
        return True

    def figure(self):
        """Loss and accuracy per epoch (whole-number epochs) under a title naming the run,
        with the test accuracy once known; None without matplotlib."""
        plt = pyplot()
        if plt is None:
            return None
        from matplotlib.ticker import MaxNLocator

        epochs = [r["epoch"] for r in self.rows]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        for ax, key in zip(axes, ("loss", "accuracy")):
            for prefix in ("", "val_"):
                if self.rows and prefix + key in self.rows[0]:
                    ax.plot(epochs, [r[prefix + key] for r in self.rows], marker="o",
                            label=(prefix or "train_") + key)
            if key == "accuracy" and self.test_accuracy is not None:
                ax.axhline(self.test_accuracy, color="k", linestyle="--", linewidth=1,
                           label=f"test_accuracy {self.test_accuracy:.2%}")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_title(key)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        title = self.title or "training history"
        if self.test_accuracy is not None:
            title += f": test accuracy {self.test_accuracy:.2%}"
        fig.suptitle(title)
        fig.tight_layout()
        return fig


_said_no_matplotlib = False


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (said once) where it is missing."""
    global _said_no_matplotlib
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not _said_no_matplotlib:
            _said_no_matplotlib = True
            logger.warning("no plots: matplotlib is not installed (pip install matplotlib); "
                           "the numbers are in the .json/.csv files")
        return None
    return plt


def summary(model: nn.Module) -> str:
    """A Keras-like table: each top-level layer, its output, its parameter count."""
    lines = [f"{'Layer':<28}{'Type':<24}{'Params':>12}", "=" * 64]
    total = 0
    for name, child in model.named_children():
        subs = list(child.children()) if isinstance(child, (nn.ModuleList, nn.Sequential)) else [child]
        for i, sub in enumerate(subs):
            n = sum(p.numel() for p in sub.parameters())
            total += n
            label = f"{name}.{i}" if len(subs) > 1 or sub is not child else name
            lines.append(f"{label:<28}{type(sub).__name__:<24}{n:>12,}")
    lines += ["=" * 64, f"{'Total params':<52}{total:>12,}"]
    return "\n".join(lines)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or torch.compile), for saving."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@dataclass
class RunOptions:
    device: torch.device = torch.device("cpu")
    bf16: bool = False          # bf16 autocast (CUDA)
    is_main: bool = True        # the rank that logs and writes files
    log_every: float = STATUS_EVERY_S  # seconds between status lines outside a terminal
    # Denormal numbers flushed to zero on every thread for each pass (gru_torch.denormals):
    # the gradient of a loss on the final state decays into them, and Intel cores take
    # up to a hundred times longer for an operation on one. TensorFlow and XLA flush too.
    flush_denormal: bool = True


def _batches_metrics(model, batches, use_lengths: bool, train: bool, optimizer=None,
                     progress: str | None = None, opts: RunOptions | None = None,
                     reduce: bool = False, log=print):
    """One pass over `batches`. progress: a name for the pass's bar / status lines (None:
    silent)."""
    opts = opts or RunOptions()
    show = progress is not None and opts.is_main
    meter = Progress(progress or "", len(batches) if hasattr(batches, "__len__") else None,
                     rate_unit="samples", log=log if show else None, every=opts.log_every,
                     bar=None if show else False)
    try:
        with flush_denormal(opts.flush_denormal):
            loss_sum, correct, seen = _pass(model, batches, use_lengths, train, optimizer,
                                            opts, meter)
    finally:
        meter.stop()  # no status lines after an error
    meter.close()
    if reduce and _distributed():  # every rank saw its own shard: sum them
        totals = torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=opts.device)
        torch.distributed.all_reduce(totals)
        loss_sum, correct, seen = totals.tolist()
    return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}


def _pass(model, batches, use_lengths: bool, train: bool, optimizer, opts: RunOptions,
          meter: Progress) -> tuple[float, int, int]:
    """The batches of one pass: (loss sum, correct, seen)."""
    loss_sum, correct, seen = 0.0, 0, 0
    for ids, lengths, labels in batches:
        ids, labels = ids.to(opts.device), labels.to(opts.device)
        with torch.set_grad_enabled(train), torch.autocast(
                opts.device.type, dtype=torch.bfloat16, enabled=opts.bf16):
            logits = model(ids, lengths if use_lengths else None).float()
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        if train:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        n = len(labels)
        loss_sum += loss.item() * n
        correct += int(((logits > 0).float() == labels).sum())
        seen += n
        meter.update(1, items=n, loss=loss_sum / seen, acc=correct / seen)
    return loss_sum, correct, seen


def evaluate(model, batches, use_lengths: bool = True, progress: str | None = None,
             opts: RunOptions | None = None, log=print) -> dict:
    model.eval()
    return _batches_metrics(unwrap(model), batches, use_lengths, train=False, progress=progress,
                            opts=opts, log=log)


@torch.no_grad()
def predict(model, batches, use_lengths: bool = True,
            device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Positive-class probabilities, in the batches' order."""
    model = unwrap(model).eval()
    return torch.cat([torch.sigmoid(model(ids.to(device), lengths if use_lengths else None)).cpu()
                      for ids, lengths, _ in batches])


def save_checkpoint(path: Path, model, optimizer, epoch: int, history: History,
                    config: dict, vocab: list[str], stopper: EarlyStopping | None) -> None:
    state = {
        "version": CHECKPOINT_VERSION, "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history.rows,
        "config": config, "vocab": vocab, "rng": torch.get_rng_state(),
        "stopper": None if stopper is None else
        {"best": stopper.best, "best_epoch": stopper.best_epoch, "wait": stopper.wait},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a readable gru_torch checkpoint "
                              f"({type(e).__name__}: {e})") from e
    missing = {"version", "model", "config", "vocab"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {sorted(missing)}; not a gru_torch "
                              "checkpoint")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has version {state['version']}, "
                              f"this gru_torch reads version {CHECKPOINT_VERSION}")
    return state


def model_from_checkpoint(state: dict) -> SentimentClassifier:
    try:
        model = SentimentClassifier(ModelConfig(**state["config"]["model"]))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"the checkpoint's model does not load: {type(e).__name__}: "
                              f"{e}") from e
    return model.eval()


def fit(model, optimizer, train_batches, val_batches, epochs: int, out: Path, config: dict,
        vocab: list[str], stopper: EarlyStopping | None = None, use_lengths: bool = True,
        resume: dict | None = None, log=print, opts: RunOptions | None = None) -> History:
    """Trains, writing last.pt every epoch and best.pt on improvement (when validating).
    Under torch.distributed every rank trains on its shard; the main rank writes files."""
    opts = opts or RunOptions()
    if not opts.is_main:
        log = lambda *a, **k: None  # noqa: E731
    out.mkdir(parents=True, exist_ok=True)
    preset = config.get("preset")
    history = History(title=f"{out.name} ({preset})" if preset and preset != out.name else out.name)
    start_epoch = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        history.rows = list(resume["history"])
        start_epoch = resume["epoch"] + 1
        torch.set_rng_state(resume["rng"])
        if stopper is not None and resume.get("stopper"):
            for k, v in resume["stopper"].items():
                setattr(stopper, k, v)
        log(f"resumed after epoch {resume['epoch'] + 1}")
    for epoch in range(start_epoch, epochs):
        if stopper is not None and stopper.wait >= stopper.patience:
            break
        train_batches.set_epoch(epoch)
        t0 = time.perf_counter()
        model.train()
        logs = {"epoch": epoch + 1, **_batches_metrics(
            model, train_batches, use_lengths, train=True, optimizer=optimizer,
            progress=f"epoch {epoch + 1}/{epochs} train", opts=opts, reduce=True, log=log)}
        logs["seconds"] = round(time.perf_counter() - t0, 2)
        if val_batches is not None:  # every rank scores the whole validation set alike
            logs.update({f"val_{k}": v for k, v in evaluate(
                model, val_batches, use_lengths, progress=f"epoch {epoch + 1}/{epochs} validation",
                opts=opts, log=log).items()})
        history.rows.append(logs)
        log("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items()))
        improved, stop = (stopper.update(epoch, logs) if stopper and val_batches is not None
                          else (True, False))
        if opts.is_main:
            if improved:
                save_checkpoint(out / "best.pt", model, optimizer, epoch, history, config, vocab,
                                stopper)
            save_checkpoint(out / "last.pt", model, optimizer, epoch, history, config, vocab,
                            stopper)
            history.write(out)
        if _distributed():
            torch.distributed.barrier()  # best.pt is complete before anyone reads it
        if stop:
            log(f"early stopping: {stopper.monitor} has not improved for {stopper.patience} epochs")
            break
    if stopper is not None and stopper.restore_best and (out / "best.pt").is_file():
        unwrap(model).load_state_dict(load_checkpoint(out / "best.pt")["model"])
    return history
