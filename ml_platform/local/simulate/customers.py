"""Synthetic retail customers for segmentation: spend, visits, basket, tenure, online share, channel and region.

Four latent segments (regulars, premium, online, lapsing) are well apart on the numeric columns, each with a
realistic spread (log-normal baskets, spend that follows visits times basket) and a few missing values. Channel
leans with the segment; region does not (it describes where a customer is, not how they shop). The segment itself
is never exported: `generate_labelled` returns it beside the rows, for benchmarks that score a clustering.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml_platform.local.simulate.breakage import break_rows

COLUMNS = ["customer_id", "annual_spend", "visits_per_month", "avg_basket", "tenure_months", "online_share",
           "channel", "region"]
SEGMENTS = ["regulars", "premium", "online", "lapsing"]
SHARE = np.array([0.35, 0.15, 0.30, 0.20])
# per segment: visits per month (mean, sd), basket in dollars (median, log sd), tenure in months (mean, sd),
# online share Beta(a, b)
VISITS = np.array([[12.0, 2.0], [4.0, 1.0], [6.0, 1.5], [1.0, 0.4]])
BASKET = np.array([[25.0, 0.2], [180.0, 0.2], [60.0, 0.2], [35.0, 0.25]])
TENURE = np.array([[60.0, 15.0], [96.0, 20.0], [18.0, 6.0], [30.0, 12.0]])
ONLINE = np.array([[2.0, 12.0], [4.0, 6.0], [12.0, 2.0], [3.0, 5.0]])
CHANNELS = ["store", "web", "app"]
CHANNEL_P = np.array([[0.85, 0.10, 0.05], [0.45, 0.45, 0.10], [0.05, 0.35, 0.60], [0.40, 0.45, 0.15]])
REGIONS = ["north", "south", "east", "west"]
MISSING = 0.02  # per optional numeric column


def _text(values: np.ndarray, fmt: str, missing: np.ndarray) -> pd.Series:
    s = pd.Series([fmt.format(v) for v in values], dtype=object)
    s[missing] = ""
    return s


def generate_labelled(rng: np.random.Generator, n: int, id_offset: int) -> tuple[pd.DataFrame, np.ndarray]:
    """n rows as CSV texts ('' for missing) and each row's latent segment (an index into SEGMENTS)."""
    seg = rng.choice(len(SEGMENTS), size=n, p=SHARE)
    visits = np.maximum(rng.normal(VISITS[seg, 0], VISITS[seg, 1]), 0.1)
    basket = rng.lognormal(np.log(BASKET[seg, 0]), BASKET[seg, 1])
    spend = visits * 12 * basket * rng.lognormal(0.0, 0.1, n)  # a year of visits, give or take
    tenure = np.clip(np.round(rng.normal(TENURE[seg, 0], TENURE[seg, 1])), 1, 240)
    online = rng.beta(ONLINE[seg, 0], ONLINE[seg, 1])
    channel = (rng.random(n)[:, None] > np.cumsum(CHANNEL_P[seg], axis=1)[:, :-1]).sum(axis=1)

    def miss():
        return rng.random(n) < MISSING

    frame = pd.DataFrame({
        "customer_id": pd.Series([f"C{i:09d}" for i in id_offset + np.arange(n)], dtype=object),
        "annual_spend": _text(spend, "{:.2f}", np.zeros(n, dtype=bool)),
        "visits_per_month": _text(visits, "{:.1f}", miss()),
        "avg_basket": _text(basket, "{:.2f}", miss()),
        "tenure_months": _text(tenure, "{:.0f}", miss()),
        "online_share": _text(online, "{:.3f}", miss()),
        "channel": pd.Series(np.array(CHANNELS, dtype=object)[channel]),
        "region": pd.Series(rng.choice(np.array(REGIONS, dtype=object), n)),
    })
    return frame[COLUMNS], seg


def generate(rng: np.random.Generator, n: int, id_offset: int) -> pd.DataFrame:
    return generate_labelled(rng, n, id_offset)[0]


def broken_lines(rng: np.random.Generator, good: pd.DataFrame) -> list[str]:
    """Malformed lines from real rows: a spend that is not a number, a row cut short, an online share above 1."""
    return break_rows(good, COLUMNS, [{"annual_spend": "n/a"}, 4, {"online_share": "1.7"}])
