"""Synthetic customer-support tickets: route each one to the queue that handles it (billing, technical, sales or
account), a multi-class task with unequal classes (about 40/33/17/10%).

The queue follows a multinomial model of the product, the channel, the customer's tier and a few numbers (how
long the message is, attachments, earlier tickets, account age, sentiment, hour), with overlap between queues, so
no model is perfect. A few rows are broken as exports break.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml_platform.local.simulate.breakage import break_rows

COLUMNS = ["ticket_id", "channel", "product", "tier", "message_length", "attachments", "prior_tickets",
           "account_age_days", "sentiment", "hour", "queue"]
QUEUES = ["billing", "technical", "sales", "account"]
CHANNELS = ["email", "chat", "phone", "web"]
PRODUCTS = ["invoices", "api", "mobile_app", "dashboard", "payments", "integrations"]
TIERS = ["free", "pro", "enterprise"]
# per queue: intercept, then effects of each product, channel and tier level, and of the standardized numbers
INTERCEPT = np.array([0.9, 0.7, -0.1, -0.6])
PRODUCT = np.array([[1.6, -0.8, -0.2, 0.4],    # invoices
                    [-0.9, 1.7, -0.3, -0.2],   # api
                    [-0.2, 1.0, -0.4, 0.5],    # mobile_app
                    [-0.1, 0.5, 0.4, 0.3],     # dashboard
                    [1.3, -0.2, -0.3, 0.2],    # payments
                    [-0.6, 1.1, 0.7, -0.4]])   # integrations
CHANNEL = np.array([[0.2, -0.3, 0.1, 0.3], [-0.1, 0.3, 0.4, -0.2], [0.3, -0.4, 0.5, 0.2], [-0.2, 0.2, -0.6, 0.4]])
TIER = np.array([[0.1, -0.2, 0.9, 0.4], [0.0, 0.2, -0.1, 0.0], [-0.2, 0.5, -0.5, -0.1]])
# message_length, attachments, prior_tickets, account_age, sentiment, hour
NUMBERS = np.array([[-0.3, 0.8, -0.4, 0.0], [-0.1, 0.9, -0.6, -0.2], [0.2, 0.1, -0.3, 0.7],
                    [0.0, 0.3, -0.7, 0.9], [-0.6, -0.3, 0.8, -0.1], [0.1, 0.3, -0.2, -0.2]])


def generate(rng: np.random.Generator, n: int, id_offset: int) -> pd.DataFrame:
    """n rows as the helpdesk exports them: every value a string, '' for missing."""
    product = rng.choice(len(PRODUCTS), size=n, p=[0.22, 0.2, 0.16, 0.16, 0.14, 0.12])
    channel = rng.choice(len(CHANNELS), size=n, p=[0.4, 0.3, 0.1, 0.2])
    tier = rng.choice(len(TIERS), size=n, p=[0.5, 0.35, 0.15])
    length = rng.lognormal(5.5, 0.8, n)
    attachments = rng.poisson(0.6, n)
    prior = rng.poisson(2.0, n)
    age = rng.gamma(2.0, 300.0, n)
    sentiment = np.clip(rng.normal(-0.1, 0.45, n), -1, 1)
    hour = rng.integers(0, 24, n)
    numbers = np.column_stack([(np.log(length) - 5.5) / 0.8, attachments - 0.6, (prior - 2.0) / 1.4,
                               (age - 600) / 420, sentiment / 0.45, (hour - 11.5) / 6.9])
    logits = INTERCEPT + PRODUCT[product] + CHANNEL[channel] + TIER[tier] + numbers @ NUMBERS
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    queue = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)

    def text(values, fmt, missing_share=0.0):
        s = pd.Series([fmt.format(v) for v in values], dtype=object)
        s[rng.random(n) < missing_share] = ""
        return s

    return pd.DataFrame({
        "ticket_id": pd.Series([f"T{id_offset + i:09d}" for i in range(n)], dtype=object),
        "channel": pd.Series(np.array(CHANNELS, dtype=object)[channel]),
        "product": pd.Series(np.array(PRODUCTS, dtype=object)[product]),
        "tier": text(np.array(TIERS, dtype=object)[tier], "{}", 0.03),
        "message_length": text(np.round(length).astype(int), "{}"),
        "attachments": text(attachments, "{}", 0.05),
        "prior_tickets": text(prior, "{}", 0.08),
        "account_age_days": text(np.round(age, 1), "{}", 0.02),
        "sentiment": text(np.round(sentiment, 3), "{}", 0.04),
        "hour": text(hour, "{}"),
        "queue": pd.Series(np.array(QUEUES, dtype=object)[queue]),
    })[COLUMNS]


def broken_lines(rng: np.random.Generator, good: pd.DataFrame) -> list[str]:
    """Rows broken the ways exports break: an unknown queue, a non-number, a row cut short."""
    return break_rows(good, COLUMNS, [{"queue": "escalations"}, {"message_length": "long"}, 5])
