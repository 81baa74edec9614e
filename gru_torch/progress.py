"""Progress a user can see wherever the output goes.

On a terminal, a tqdm bar. Anywhere else (a pipe, a log file, `make train > log`), a
status line every `every` seconds (30 by default, from a timer thread) and one at the end: what is done, the
rate, the ETA and any running figures (loss, accuracy). A `RunLog` writes lines to the
console and, with a time stamp, to a run's `train.log`; the status lines always reach
the file, and reach the console only where no bar is drawn.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Callable

STATUS_EVERY_S = 30.0


def on_terminal() -> bool:
    """Whether bars can be drawn: tqdm writes to stderr."""
    return sys.stderr.isatty()


def duration(seconds: float) -> str:
    """'45s', '3m05s', '1h02m'."""
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class RunLog:
    """A callable log: `log(msg)` prints msg and appends it to the open file, if any, with
    a time stamp; `log(msg, console=False)` writes the file only. Disabled, it drops all
    (the non-main ranks of a data-parallel run)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path: Path | None = None
        self._file = None
        self._lock = threading.Lock()  # Progress's timer thread writes too

    def open(self, path: Path, append: bool = False) -> None:
        if not self.enabled:
            return
        self.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "a" if append else "w", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __call__(self, *parts, console: bool = True) -> None:
        if not self.enabled:
            return
        msg = " ".join(str(p) for p in parts)
        with self._lock:
            if console:
                print(msg, flush=True)
            if self._file is not None:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                self._file.write("".join(f"{stamp} {line}\n" for line in msg.splitlines() or [""]))
                self._file.flush()


class LogHandler(logging.Handler):
    """Routes the library's `logging` records (data loading, warnings) into a RunLog."""

    def __init__(self, log: RunLog) -> None:
        super().__init__(logging.INFO)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        self.log(msg if record.levelno < logging.WARNING else f"warning: {msg}")


class Progress:
    """Counts work done (`update`) and reports it: a bar on a terminal, and status lines to
    `log` every `every` seconds from a timer thread (so a line comes on time even while one
    step runs long), and a final line from `close()`.

    total: the expected count (None when unknown). unit: what is counted ("batches").
    rate_unit: what the rate counts ("samples", given as `update(items=...)`), else unit.
    bar: draw a tqdm bar (default: on a terminal). log: a RunLog, or any callable taking
    a string (then status lines go to it only where no bar is drawn)."""

    def __init__(self, desc: str, total: int | None, *, unit: str = "batches",
                 rate_unit: str | None = None, log: Callable[..., None] | None = print,
                 every: float = STATUS_EVERY_S, bar: bool | None = None) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.rate_unit = rate_unit or unit
        self.log, self.every = log, every
        self.done = self.items = 0
        self.fields: dict[str, str] = {}
        self.start = time.perf_counter()
        self._lock = threading.Lock()
        if bar is None:
            bar = on_terminal()
        self.has_bar, self.bar = bool(bar), None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit[:-1] if unit.endswith("s") else unit,
                            unit_scale=unit == "bytes", leave=False, dynamic_ncols=True,
                            mininterval=0.5, file=sys.stderr)
        self._stop = threading.Event()
        self._ticker = None
        if log is not None and (not self.has_bar or isinstance(log, RunLog)):
            self._ticker = threading.Thread(target=self._tick, name=f"progress: {desc}",
                                            daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._emit(self.status())

    def update(self, n: int = 1, items: int | None = None, **fields) -> None:
        with self._lock:
            self.done += n
            self.items += n if items is None else items
            self.fields.update({k: f"{v:.4f}" if isinstance(v, float) else str(v)
                                for k, v in fields.items()})
        if self.bar is not None:
            self.bar.update(n)
            if self.fields:
                self.bar.set_postfix(self.fields, refresh=False)

    def status(self, final: bool = False) -> str:
        with self._lock:
            elapsed = time.perf_counter() - self.start
            done, items, fields = self.done, self.items, dict(self.fields)
        count = f"{done:,}/{self.total:,}" if self.total is not None else f"{done:,}"
        parts = [self.desc, f"{count} {self.unit}"]
        if elapsed > 0 and items:
            rate = items / elapsed
            parts.append(f"{rate:,.0f} {self.rate_unit}/s" if rate >= 10
                         else f"{rate:.2g} {self.rate_unit}/s")
        if final:
            parts.append(f"in {duration(elapsed)}")
        elif self.total and done:
            parts.append(f"ETA {duration(elapsed / done * (self.total - done))}")
        parts += [f"{k} {v}" for k, v in fields.items()]
        return "  ".join(parts)

    def _emit(self, line: str, console: bool | None = None) -> None:
        if self.log is None:
            return
        console = not self.has_bar if console is None else console
        if isinstance(self.log, RunLog):
            self.log(line, console=console)
        elif console:
            self.log(line)

    def stop(self) -> None:
        """Ends the timer and the bar, saying nothing (also after an error)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self, console: bool | None = None) -> str:
        """Stops, logs the final status line and returns it. console=None: on the console
        only where no bar was drawn (the caller prints its own summary there)."""
        self.stop()
        line = self.status(final=True)
        self._emit(line, console)
        return line
