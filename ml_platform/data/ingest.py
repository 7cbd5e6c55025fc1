"""Bronze ingestion: check a landed CSV against its spec, parse it with Spark, keep every parsed row.

A whole file is rejected only when nothing in it can be trusted (no header, wrong delimiter, binary, no
target). Otherwise rows that do not parse are kept in bronze with `_corrupt_record` set; cleaning quarantines
them with a reason, so nothing is dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field

from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store

CORRUPT = "_corrupt_record"
HASH_CHUNK = 1 << 20


class RejectedFile(ValueError):
    """The whole file is unusable; the message says why, for the quarantine note and the UI."""


@dataclass(frozen=True)
class HeaderCheck:
    columns: list[str]
    missing: list[str] = field(default_factory=list)  # spec columns absent from the file: they become null
    extra: list[str] = field(default_factory=list)  # columns the spec does not know: dropped


def name_empty_headers(header: list[str], spec: DatasetSpec) -> list[str]:
    """Give each empty header cell a name: the spec's column declared at that position, else `_c<i>` (Spark's
    own name for it), which the spec does not know and so is dropped like any extra column."""
    by_position = {c.position: c.name for c in spec.columns if c.position is not None}
    return [h or by_position.get(i, f"_c{i}") for i, h in enumerate(header)]


def check_header(head: bytes, spec: DatasetSpec, file_size: int) -> HeaderCheck:
    """Validate the first bytes of a batch file; raise RejectedFile with a reason a person can act on."""
    if not head:
        raise RejectedFile("empty file (0 bytes)")
    if b"\x00" in head[:8192]:
        raise RejectedFile("binary content (NUL bytes): not a text CSV file")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # a multi-byte character cut at the end of `head` is fine
            raise RejectedFile(f"not UTF-8 text (bad byte at offset {e.start})") from None
        text = head[: e.start].decode("utf-8")
    first_line = text.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")
    if not first_line.strip():
        raise RejectedFile("no header line: the file starts with an empty line")
    try:
        cells = next(csv.reader([first_line]))
    except csv.Error as e:  # a lone carriage return inside the header, say: a rejected file, not a broken tick
        raise RejectedFile(f"header not readable as CSV: {e}") from None
    header = name_empty_headers([h.strip() for h in cells], spec)
    if len(header) == 1:
        for delim, label in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if first_line.count(delim) >= 2:
                raise RejectedFile(f"wrong delimiter: the header is {label}-separated; {spec.name} files use commas")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise RejectedFile(f"duplicate header columns {dupes}")
    known = set(spec.column_names)
    absent_required = [c for c in spec.required_columns if c not in header]
    if absent_required:
        what = "target column" if spec.target in absent_required else "required columns"
        raise RejectedFile(f"missing {what} {absent_required}; header has {len(header)} columns: {header[:8]}...")
    if "\n" not in text and file_size > len(head):
        raise RejectedFile(f"header line longer than {len(head)} bytes: not a CSV header")
    body = text.split("\n", 1)[1] if "\n" in text else ""
    if file_size <= len(head) and not body.strip():
        raise RejectedFile("header only: the file has no data rows")
    return HeaderCheck(
        columns=header,
        missing=[c for c in spec.column_names if c not in header],
        extra=[h for h in header if h not in known],
    )


def content_hash(store: Store, rel: str) -> str:
    h = hashlib.sha256()
    with store.open_read(rel) as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_csv(spark, path: str, header: HeaderCheck, spec: DatasetSpec):
    """Parse with Spark: multiLine and escape keep quoted commas, quotes and newlines inside one field;
    every value stays a string (typing is cleaning's job); rows with the wrong field count are kept
    with their raw text in `_corrupt_record`. Spec columns missing from the file come back as null and
    unknown extra columns are dropped, so bronze always has the spec's columns in the spec's order."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField(h, T.StringType()) for h in header.columns]
                          + [T.StructField(CORRUPT, T.StringType())])
    df = (spark.read.option("header", True).option("multiLine", True).option("escape", '"')
          .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
          .option("encoding", "UTF-8").schema(schema).csv(path))
    present = set(header.columns)
    cols = [(F.col(f"`{c}`") if c in present else F.lit(None).cast("string")).alias(c) for c in spec.column_names]
    return df.select(*cols, F.col(CORRUPT))

