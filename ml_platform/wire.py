"""How a job's inputs and summaries travel as plain JSON: a dataset spec (to an EMR job, into a training set's
record), and summaries carrying bytes (plots) or dates back to Dagster."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import types
import typing

from ml_platform.spec import DatasetSpec


def spec_to_wire(spec: DatasetSpec) -> dict:
    """A spec as plain JSON, so a job elsewhere (EMR) runs on the very spec Dagster loaded, from any directory."""
    return to_wire(dataclasses.asdict(spec))


def spec_from_wire(obj: dict) -> DatasetSpec:
    return _rebuild(DatasetSpec, obj)


def _rebuild(tp, value):
    """Undo dataclasses.asdict + JSON by the field types: nested dataclasses, tuples (JSON lists), optionals."""
    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: _rebuild(hints[f.name], value[f.name]) for f in dataclasses.fields(tp)
                     if f.name in value})
    if origin in (typing.Union, types.UnionType):
        return _rebuild(next(t for t in args if t is not type(None)), value)
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_rebuild(args[0], v) for v in value)
        return tuple(_rebuild(t, v) for t, v in zip(args, value, strict=False))
    return value


def _encode(o):
    if isinstance(o, bytes):
        return {"__bytes__": base64.b64encode(o).decode()}
    if isinstance(o, dt.datetime | dt.date):
        return o.isoformat()
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if isinstance(o, set | tuple):
        return list(o)
    raise TypeError(f"{type(o).__name__} cannot travel in a job summary")


def to_wire(summary: dict) -> dict:
    return json.loads(json.dumps(summary, default=_encode))


def from_wire(obj):
    if isinstance(obj, dict):
        if set(obj) == {"__bytes__"}:
            return base64.b64decode(obj["__bytes__"])
        return {k: from_wire(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_wire(v) for v in obj]
    return obj
