"""The message contracts, owned here alone: topic names and kinds, the size limit, the JSON Schemas in
contracts/, builders for the messages that Python writes (requests, actuals) and validation against the schemas
(jsonschema, Draft 2020-12 with format checks). No pyspark import: naming a topic or checking a message is cheap.

Kinds and their schemas: requests -> request, actuals -> actual, predictions -> prediction, metrics -> metrics,
dlq -> dlq, shadow -> prediction (a challenger's predictions in shadow mode). The scorer's Spark expressions
(serve/scoring.py) write predictions, shadow predictions and DLQ records of these shapes; a test holds them to
the schemas.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import UTC, datetime
from importlib import resources
from typing import Any

KINDS = ("requests", "actuals", "predictions", "metrics", "dlq", "shadow")
# shadow: a challenger's predictions in shadow mode, for the store and the live metrics, never for the caller
SCHEMA_OF = {"requests": "request", "actuals": "actual", "predictions": "prediction", "metrics": "metrics",
             "dlq": "dlq", "shadow": "prediction"}
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # broker message.max.bytes and the writers' max.request.size
# A request_id is the Kafka key and the join key of actuals: printable, no whitespace, at most 200 characters.
# Anything else (an object, a number, a tab) is a DLQ record "invalid request_id", not a guess at what was meant.
# A JSON number (12345) is not an id: the schema says string, and 1e3 / 1000 / 01000 would be one id or three
# depending on who reads the number. `(?![\s\S])` is "end of text" in Python, Java (Spark's rlike) and ECMA
# (JSON Schema) alike; a bare `$` would let a trailing newline through in Python and Java.
REQUEST_ID_PATTERN = r"^[\x21-\x7e]{1,200}(?![\s\S])"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
# A DLQ record never carries the whole rejected message: a 1 MB request of control bytes is 6 MB once
# JSON-escaped, over the producer limit, and a write that always fails stops the scorer. It carries the first
# DLQ_EXCERPT_CHARS characters, the original size and the SHA-256 of the original bytes.
DLQ_EXCERPT_CHARS = 2048
DLQ_REASON_CHARS = 1000
DLQ_KEY_CHARS = 1000  # the key falls back to the Kafka key when request_id is invalid; any size may come


class ContractError(ValueError):
    """A message that does not match its contract; the text names the kind, the field and what was wrong."""


def topic(spec_or_name: Any, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}; one of {KINDS}")
    return f"{getattr(spec_or_name, 'name', spec_or_name)}.{kind}"


def contract(name: str) -> dict:
    """The JSON Schema of one message kind: request, actual, prediction, metrics or dlq."""
    return json.loads(resources.files("ml_platform.serve.contracts").joinpath(f"{name}.schema.json").read_text())


@functools.cache
def _validator(name: str):
    from jsonschema import Draft202012Validator

    schema = contract(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(kind: str, message: Any) -> list[str]:
    """What is wrong with `message` as a `kind` message (a topic kind or a schema name); empty when it is valid."""
    name = SCHEMA_OF.get(kind, kind)
    out = []
    for e in sorted(_validator(name).iter_errors(message), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in e.absolute_path) or "(message)"
        out.append(f"{where}: {e.message[:200]}")
    return out


def validate(kind: str, message: Any) -> Any:
    """Return `message` if it matches its contract, else raise ContractError naming every problem."""
    problems = errors(kind, message)
    if problems:
        raise ContractError(f"{SCHEMA_OF.get(kind, kind)} message: " + "; ".join(problems))
    return message


def valid_request_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_REQUEST_ID.match(value))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request(spec, rid: str, row: dict, event_time: str | None = None) -> dict:
    """A request: the raw columns exactly as in the file, without the target."""
    return {"request_id": rid, "event_time": event_time or now_iso(),
            **{k: v for k, v in row.items() if k != spec.target and k in spec.column_names}}


def actual(rid: str, value: float, event_time: str | None = None) -> dict:
    """The true label of an earlier request, joined to its prediction by request_id."""
    return {"request_id": rid, "event_time": event_time or now_iso(), "actual": value}


def encode(kind: str, message: dict) -> bytes:
    """Validate and serialize a message that Python writes to a topic."""
    return json.dumps(validate(kind, message), allow_nan=False).encode()
