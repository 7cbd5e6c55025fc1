"""Synthetic movie ratings, shaped like MovieLens: user_id, movie_id, rating (1..5, a few half stars), rated_at.

Every user and movie has a FIXED taste (drawn from a fixed seed, whatever the batch), so batches agree about who
likes what. Movies belong to genres; a user likes some genres and dislikes others. Who rates what follows both a
skewed (Zipf-like) popularity and the user's taste, as in real logs, where people mostly watch what they expect
to like: the most popular movies are a real competitor to a recommender, one that knows the user's taste beats
them. A rating is 3.4 + the user's and the movie's bias + their affinity + noise, rounded and clipped to 1..5.
Within a chunk a user rates a movie at most once; across batches a user may rate it again (a re-rating).
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import numpy as np
import pandas as pd

from ml_platform.local.simulate.breakage import break_rows, repeat_some

COLUMNS = ["user_id", "movie_id", "rating", "rated_at"]
USERS, MOVIES = 400, 300     # the universe at the simulator's scale; the benchmark asks for a larger one
GENRES = 5
TASTE_SEED = 20240607        # fixed: tastes never depend on the batch's generator
ZIPF = 0.8                   # popularity of the movie at popularity rank r is proportional to r ** -ZIPF
SELECTION = 3.5              # how strongly taste drives which movies a user rates (exp(SELECTION * affinity))
NOISE = 0.4                  # rating noise, in stars
BASE = 2.5
QUALITY_SPREAD = 0.4
START = dt.date(2023, 1, 1)


@lru_cache(maxsize=4)
def tastes(users: int = USERS, movies: int = MOVIES) -> dict[str, np.ndarray]:
    """The fixed latent world: per user its activity, bias and genre preferences; per movie its popularity, bias
    and genre loadings; and the user x movie affinity (the user-movie part of a rating, in stars)."""
    rng = np.random.default_rng([TASTE_SEED, users, movies])
    genre = rng.integers(0, GENRES, movies)
    loadings = np.eye(GENRES)[genre] + rng.normal(0, 0.25, (movies, GENRES))
    prefs = rng.normal(0, 0.8, (users, GENRES))
    popularity = np.arange(1, movies + 1, dtype=float) ** -ZIPF
    popularity = popularity[rng.permutation(movies)]  # popular movies in every genre
    activity = rng.lognormal(0, 1.0, users)          # a few users rate a lot
    log_pop = np.log(popularity)
    # good movies get popular: a movie's quality is partly its popularity
    quality = QUALITY_SPREAD * (0.6 * rng.normal(0, 1, movies) + 0.8 * (log_pop - log_pop.mean()) / log_pop.std())
    return {"affinity": prefs @ loadings.T, "user_bias": rng.normal(0, 0.3, users),
            "movie_bias": quality, "popularity": popularity / popularity.sum(),
            "activity": activity / activity.sum()}


def interactions(rng: np.random.Generator, n: int, users: int = USERS,
                 movies: int = MOVIES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n (user, movie, rating as a float in [1, 5] before rounding) draws; a user rates a movie once per call."""
    w = tastes(users, movies)
    who = rng.choice(users, size=n, p=w["activity"])
    u_out, m_out = [], []
    for u, c in zip(*np.unique(who, return_counts=True), strict=True):
        p = w["popularity"] * np.exp(SELECTION * w["affinity"][u])
        c = min(int(c), movies // 2)
        u_out.append(np.full(c, u))
        m_out.append(rng.choice(movies, size=c, replace=False, p=p / p.sum()))
    u_idx, m_idx = np.concatenate(u_out), np.concatenate(m_out)
    order = rng.permutation(len(u_idx))
    u_idx, m_idx = u_idx[order], m_idx[order]
    raw = (BASE + w["user_bias"][u_idx] + w["movie_bias"][m_idx] + w["affinity"][u_idx, m_idx]
           + rng.normal(0, NOISE, len(u_idx)))
    return u_idx, m_idx, np.clip(raw, 1.0, 5.0)


def _stars(rng: np.random.Generator, raw: np.ndarray) -> np.ndarray:
    """Whole stars as text ("4"); about 3% of ratings in half stars ("4.5"), as some clients allow them."""
    half = rng.random(len(raw)) < 0.03
    value = np.where(half, np.clip(np.floor(raw) + 0.5, 1.0, 5.0), np.rint(raw))
    return np.where(value == np.floor(value), value.astype(int).astype(str), value.astype(str))


def generate(rng: np.random.Generator, n: int, id_offset: int, users: int = USERS,
             movies: int = MOVIES) -> pd.DataFrame:
    u_idx, m_idx, raw = interactions(rng, n, users, movies)
    days = (id_offset // 10_000_000) * 7 + rng.integers(0, 7, len(u_idx))  # batch b covers week b
    frame = pd.DataFrame({
        "user_id": np.char.add("u", (u_idx + 1).astype(str)),
        "movie_id": (m_idx + 1).astype(str),
        "rating": _stars(rng, raw),
        "rated_at": [(START + dt.timedelta(days=int(d))).isoformat() for d in days],
    }).astype(object)
    return repeat_some(rng, frame)[COLUMNS]


def broken_lines(rng: np.random.Generator, good: pd.DataFrame) -> list[str]:
    """Malformed ratings: a rating in words, one off the scale, a missing user, a truncated line."""
    return break_rows(good, COLUMNS, [{"rating": "four"}, {"rating": "7"}, {"user_id": ""}, 2])
