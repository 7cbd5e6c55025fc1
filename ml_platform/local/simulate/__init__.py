"""Deterministic data simulator: training batches dropped into a landing zone, plus a held-out test stream.

Rows are generated in chunks from (seed, batch, chunk), so any batch can be regenerated alone, memory stays
flat at tens of millions of rows, and the same seed always gives the same bytes.
"""

from __future__ import annotations

import csv
import importlib
import io
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# dataset -> its generator module here: generate(rng, n, id_offset) -> DataFrame of CSV texts, and
# broken_lines(rng, good_rows) -> malformed lines; imported on first use
SIMULATORS = {"used_cars": "used_cars", "fraud": "fraud", "tickets": "tickets", "customers": "customers",
              "movie_ratings": "movie_ratings"}


class _Generators(Mapping):
    def __getitem__(self, name):
        return importlib.import_module(f"{__name__}.{SIMULATORS[name]}")

    def __contains__(self, name):
        return name in SIMULATORS

    def __iter__(self):
        return iter(SIMULATORS)

    def __len__(self):
        return len(SIMULATORS)


GENERATORS = _Generators()
BATCH_NAME = re.compile(r"^batch-(\d{5,})\.csv$")


@dataclass(frozen=True)
class SimConfig:
    dataset: str
    rows_per_batch: int
    seed: int = 7
    test_share: float = 0.1
    broken_share: float = 0.002
    chunk_rows: int = 50_000
    drift: float = 0.0  # used_cars only: the market moved; prices are (1 + drift) times what the model learnt


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for i, start in enumerate(range(0, total, size)):
        yield i, min(size, total - start)


def batch_text_chunks(cfg: SimConfig, batch: int) -> Iterator[tuple[str, str, int]]:
    """Yield (training CSV text, test-stream CSV text, rows generated) per chunk of one batch."""
    gen = GENERATORS[cfg.dataset]
    generated = int(round(cfg.rows_per_batch / (1 - cfg.test_share)))
    for i, n in _chunks(generated, cfg.chunk_rows):
        rng = np.random.default_rng([cfg.seed, batch, i])
        drift = {"drift": cfg.drift} if cfg.drift else {}  # the other generators have no drift to offer
        frame = gen.generate(rng, n, id_offset=batch * 10_000_000 + i * cfg.chunk_rows, **drift)
        is_test = rng.random(len(frame)) < cfg.test_share
        header = i == 0
        train_buf, test_buf = io.StringIO(), io.StringIO()
        frame[~is_test].to_csv(train_buf, index=False, header=header, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        frame[is_test].to_csv(test_buf, index=False, header=header, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        n_broken = int(rng.binomial(n, cfg.broken_share))
        if n_broken:
            train = frame[~is_test]
            sample = train.sample(n=min(n_broken, len(train)), random_state=int(rng.integers(1 << 31)))
            train_buf.write("\n".join(gen.broken_lines(rng, sample)) + "\n")
        yield train_buf.getvalue(), test_buf.getvalue(), len(frame)


def next_batch_index(landing: Path) -> int:
    """Resume numbering after the highest batch already landed (or quarantined next to it)."""
    seen = [int(m.group(1)) for p in landing.glob("batch-*.csv") if (m := BATCH_NAME.match(p.name))]
    return max(seen, default=0) + 1


class Progress:
    """A one-line progress bar on stderr; silent when disabled."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled, self.t0 = total, 0, enabled, time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        if self.enabled:
            frac = min(1.0, self.done / max(self.total, 1))
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\r[{bar:<30}] {frac:6.1%} {self.done:,}/{self.total:,} rows "
                             f"{time.monotonic() - self.t0:6.1f}s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def write_batch(cfg: SimConfig, batch: int, landing: Path, test_dir: Path | None,
                progress: Progress | None = None) -> Path:
    """Write one batch atomically: to a hidden temp name first, renamed into place when complete."""
    landing.mkdir(parents=True, exist_ok=True)
    final = landing / f"batch-{batch:05d}.csv"
    tmp = landing / f".{final.name}.tmp"
    test_file = None
    if test_dir is not None:
        test_dir.mkdir(parents=True, exist_ok=True)
        test_file = open(test_dir / f"test-{batch:05d}.csv", "w", encoding="utf-8", newline="")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as out:
            for train_text, test_text, n in batch_text_chunks(cfg, batch):
                out.write(train_text)
                if test_file:
                    test_file.write(test_text)
                if progress:
                    progress.add(n)
        os.replace(tmp, final)
    finally:
        if test_file:
            test_file.close()
        tmp.unlink(missing_ok=True)
    return final


def simulate(cfg: SimConfig, landing: Path, test_dir: Path | None, batches: int, every: float = 0.0,
             show_progress: bool = True, on_batch: Callable[[Path], None] | None = None,
             stop: Callable[[], bool] = lambda: False) -> list[Path]:
    """Write `batches` batches, one every `every` seconds (0: back to back), resuming the numbering."""
    start = next_batch_index(landing)
    generated = int(round(cfg.rows_per_batch / (1 - cfg.test_share)))
    progress = Progress(generated * batches, enabled=show_progress and every == 0)
    written = []
    for b in range(start, start + batches):
        if stop():
            break
        path = write_batch(cfg, b, landing, test_dir, progress)
        written.append(path)
        if on_batch:
            on_batch(path)
        if every and b < start + batches - 1:
            deadline = time.monotonic() + every
            while time.monotonic() < deadline and not stop():
                time.sleep(min(1.0, every))
    progress.close()
    return written
