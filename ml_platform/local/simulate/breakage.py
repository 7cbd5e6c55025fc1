"""What the simulators share: rows an export repeats, and good rows broken the ways exports break them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd


def repeat_some(rng: np.random.Generator, frame: pd.DataFrame, share: float = 0.003) -> pd.DataFrame:
    """The frame with about `share` of its rows appended again (the export repeats rows)."""
    again = rng.random(len(frame)) < share
    return pd.concat([frame, frame[again]]).reset_index(drop=True) if again.any() else frame


def break_rows(good: pd.DataFrame, columns: list[str], breaks: list[dict[str, str] | int],
               text: Callable[[object], str] = str) -> list[str]:
    """Row i of `good` as one CSV line, broken by breaks[i % len(breaks)]: {column: the bad text it gets}, or a
    number n: only the first n fields (a row cut short). `text` spells each value."""
    lines = []
    for i in range(len(good)):
        row = [text(v) for v in good.iloc[i]]
        b = breaks[i % len(breaks)]
        if isinstance(b, int):
            row = row[:b]
        else:
            for col, bad in b.items():
                row[columns.index(col)] = bad
        lines.append(",".join(row))
    return lines
