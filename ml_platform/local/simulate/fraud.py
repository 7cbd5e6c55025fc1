"""Synthetic card transactions shaped like the public credit-card fraud set: Time, V1..V28, Amount, Class.

0.17% of rows are frauds. Frauds are shifted on the components known to carry signal (V14, V17, V12, V10,
V4, V11, ...), a share of them barely so (they overlap legitimate rows), and the export repeats some rows and
quotes its labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml_platform.local.simulate.breakage import break_rows, repeat_some
from ml_platform.spec import builtin_specs

COLUMNS = builtin_specs()["fraud"].column_names
FRAUD_RATE = 0.0017
# component -> mean shift of frauds, in standard deviations (signs as in the public data)
SHIFTS = {"V14": -6.0, "V17": -5.5, "V12": -5.0, "V10": -4.5, "V4": 3.5, "V11": 3.0, "V3": -4.0, "V16": -3.5}


def generate(rng: np.random.Generator, n: int, id_offset: int) -> pd.DataFrame:
    fraud = rng.random(n) < FRAUD_RATE
    strength = np.where(rng.random(n) < 0.2, 0.15, 1.0)  # a fifth of frauds look almost legitimate
    data = {"Time": np.round(np.sort(rng.uniform(0, 172_800, n)) + id_offset % 172_800, 1)}
    for i in range(1, 29):
        col = rng.normal(0, 1.0 / (1 + i * 0.05), n)
        shift = SHIFTS.get(f"V{i}", 0.0)
        col = col + np.where(fraud, shift * strength * rng.uniform(0.6, 1.2, n), 0.0)
        data[f"V{i}"] = np.round(col, 6)
    amount = rng.lognormal(3.2, 1.4, n)
    data["Amount"] = np.round(np.where(fraud, rng.lognormal(4.0, 1.6, n), amount), 2)
    frame = pd.DataFrame(data)
    frame = frame.astype(str).astype(object)
    # labels arrive quoted; most as "0" (CSV-quoted), some as '0'
    frame["Class"] = np.where(rng.random(n) < 0.9, fraud.astype(int).astype(str),
                              np.char.add(np.char.add("'", fraud.astype(int).astype(str)), "'"))
    return repeat_some(rng, frame)[COLUMNS]


def broken_lines(rng: np.random.Generator, good: pd.DataFrame) -> list[str]:
    """Malformed lines: an amount that is not a number, a label outside {0, 1}, a row cut short."""
    return break_rows(good, COLUMNS, [{"Amount": "n/a"}, {"Class": "2"}, 10])
