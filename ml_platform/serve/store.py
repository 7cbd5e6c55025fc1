"""The prediction store: every prediction (served or shadow) and every actual, kept by (dataset, request_id),
behind DynamoDB's API through boto3's low-level client. The same code talks to real DynamoDB (endpoint_url None)
or to a DynamoDB-API server on loopback (dynalite, for `make run` and the tests).

One table for all datasets. Items:
  pk = "<dataset>#<request_id>"   sk = "served#<model_name>#<model_version>"   one per served prediction
                                  sk = "shadow#<model_name>#<model_version>"   one per shadow prediction
                                  sk = "actual"                                the true label
A dataset name has no '#' (spec.NAME), so pk is unambiguous; '%' and '#' in a model name or version are escaped.
The dataset, the request_id and served/shadow are read back from the key, not stored again: each attribute costs
the store server CPU on every write (about a quarter less per item for these three, measured on dynalite).

Writes are first-write-wins upserts: a key already stored is left as it is, so a replayed micro-batch (the same
messages, or the same requests re-scored with a later scored_at) changes nothing. The check (BatchGetItem) and
the write (BatchWriteItem, 25 a request) are not one atomic step; with one writer per partition (a consumer
group) two copies of one key race only across a rebalance, and either copy is a true record. Conditional
UpdateItem would close that gap at a fifth of the throughput (bench/store_bench.py measures both).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from ml_platform.serve.messages import valid_request_id
from ml_platform.spec import NAME

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# DynamoDB numbers: 38 significant digits, magnitude 1e-130 .. 9.99e125; NaN and infinities are not numbers there
_MIN_MAG, _MAX_MAG = 1e-130, 9.99e125
_WRITE_CHUNK, _GET_CHUNK = 25, 100  # the API's own limits per BatchWriteItem / BatchGetItem


class StoreUnavailable(RuntimeError):
    """The store could not be reached or asked to slow down: retry later, the same write is safe to repeat.
    `code` is DynamoDB's error code when it answered (ResourceNotFoundException: no such table)."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


class StoreRejected(ValueError):
    """The store refused a request as invalid: repeating it will not help."""


def _esc(s: str) -> str:
    return s.replace("%", "%25").replace("#", "%23")


def _pk(dataset: str, request_id: str) -> str:
    if not isinstance(dataset, str) or not NAME.fullmatch(dataset):
        raise ValueError(f"dataset {dataset!r}: a letter, then letters, digits or _")
    if not valid_request_id(request_id):
        raise ValueError(f"request_id {str(request_id)[:80]!r}: 1-200 printable ASCII characters, no whitespace")
    return f"{dataset}#{request_id}"


def _number(v, where: str) -> dict:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{where}: a number is needed, got {type(v).__name__}")
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{where}: {v} is not a finite number")
    if v != 0 and not _MIN_MAG <= abs(v) <= _MAX_MAG:
        raise ValueError(f"{where}: {v} is outside DynamoDB's number range (1e-130 .. 9.99e125 in magnitude)")
    text = str(v) if isinstance(v, int) and len(str(abs(v))) <= 38 else repr(float(v))
    return {"N": text}


def _text(msg: dict, field: str, limit: int = 256) -> dict:
    v = msg.get(field)
    if not isinstance(v, str) or not v or len(v) > limit:
        raise ValueError(f"{field}: a non-empty string of at most {limit} characters is needed, got {str(v)[:80]!r}")
    return {"S": v}


def prediction_item(dataset: str, msg: dict, served: bool = True) -> dict:
    """The DynamoDB item of one prediction message (topic predictions: served, topic shadow: not). Raises
    ValueError naming the field when the message cannot be stored."""
    if not isinstance(msg, dict):
        raise ValueError(f"a prediction is a JSON object, got {type(msg).__name__}")
    pk = _pk(dataset, msg.get("request_id"))
    name, version = _text(msg, "model_name"), _text(msg, "model_version", 128)
    sha = msg.get("input_sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise ValueError(f"input_sha256: 64 hex digits or null, got {str(sha)[:80]!r}")
    prob = msg.get("probability")
    return {"pk": {"S": pk}, "sk": {"S": f"{'served' if served else 'shadow'}#{_esc(name['S'])}#{_esc(version['S'])}"},
            "model_name": name,
            "model_version": version, "prediction": _number(msg.get("prediction"), "prediction"),
            "probability": {"NULL": True} if prob is None else _number(prob, "probability"),
            "scored_at": _text(msg, "scored_at", 64),
            "event_time": _text(msg, "event_time", 64),
            "input_sha256": {"NULL": True} if sha is None else {"S": sha.lower()}}


def actual_item(dataset: str, msg: dict) -> dict:
    """The DynamoDB item of one actual message; raises ValueError naming the field when it cannot be stored."""
    if not isinstance(msg, dict):
        raise ValueError(f"an actual is a JSON object, got {type(msg).__name__}")
    return {"pk": {"S": _pk(dataset, msg.get("request_id"))}, "sk": {"S": "actual"},
            "actual": _number(msg.get("actual"), "actual"),
            "actual_at": _text(msg, "event_time", 64)}


def _plain(av: dict):
    (t, v), = av.items()
    return {"S": lambda: v, "N": lambda: float(v), "BOOL": lambda: v, "NULL": lambda: None}[t]()


def _plain_item(it: dict) -> dict:
    """An item as plain values, with what its key says: dataset, request_id and served."""
    out = {k: _plain(v) for k, v in it.items()}
    out["dataset"], out["request_id"] = out["pk"].split("#", 1)
    if out["sk"] != "actual":
        out["served"] = out["sk"].startswith("served#")
    return out


def _unavailable(e: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return True  # BotoCoreError: connection refused/reset, timeouts, once botocore's own retries are spent
    code = e.response.get("Error", {}).get("Code", "")
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status >= 500 or "Throttl" in code or code in (
        "ProvisionedThroughputExceededException", "RequestLimitExceeded", "ResourceNotFoundException",
        "ResourceInUseException")


class PredictionStore:
    """The store of one table. `endpoint_url` None is AWS (credentials from boto3's chain); a loopback URL is a
    local DynamoDB-API server, given dummy keys when the environment has none (it checks no signature)."""

    def __init__(self, table: str, endpoint_url: str | None = None, region: str = "us-east-1", threads: int = 2):
        import boto3
        from botocore.config import Config
        from botocore.credentials import EnvProvider

        if not isinstance(table, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{3,255}", table):
            raise ValueError(f"table {table!r}: 3-255 characters of letters, digits, _ . -")
        if not region:
            raise ValueError("region is needed (e.g. us-east-1)")
        keys = {}
        if endpoint_url:
            u = urlparse(endpoint_url)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError(f"endpoint_url {endpoint_url!r}: http(s)://host:port, or None for AWS")
            if u.hostname in _LOOPBACK and EnvProvider().load() is None:
                keys = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
        self.table, self.endpoint_url, self.region = table, endpoint_url, region
        # parameter validation off: the item builders above check every value, and it cost a third of the
        # client's time per BatchWriteItem (1,700 -> 2,600 items/s); the server still rejects a malformed request
        self.client = boto3.client("dynamodb", endpoint_url=endpoint_url or None, region_name=region, **keys,
                                   config=Config(parameter_validation=False, connect_timeout=3, read_timeout=20,
                                                 retries={"mode": "standard", "max_attempts": 3},
                                                 max_pool_connections=max(10, threads * 2)))
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="store") if threads > 1 else None

    def _call(self, op: str, **kw) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, op)(**kw)
        except (BotoCoreError, ClientError) as e:
            if _unavailable(e):
                code = e.response.get("Error", {}).get("Code", "") if isinstance(e, ClientError) else ""
                raise StoreUnavailable(f"{op} on {self.table} at {self.endpoint_url or 'AWS'}: {e}", code) from e
            raise StoreRejected(f"{op} on {self.table}: {e}") from e

    def ensure_table(self, wait_s: float = 60.0) -> None:
        """Create the table (on-demand capacity) if it does not exist, and wait until it is ACTIVE. An existing
        table is only described, so production can deny CreateTable to the writer's role."""
        try:
            self._call("describe_table", TableName=self.table)
        except StoreUnavailable as e:
            if e.code != "ResourceNotFoundException":
                raise
            try:
                self._call("create_table", TableName=self.table, BillingMode="PAY_PER_REQUEST",
                           AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                                 {"AttributeName": "sk", "AttributeType": "S"}],
                           KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                      {"AttributeName": "sk", "KeyType": "RANGE"}])
            except StoreUnavailable as e2:  # another writer created it meanwhile: fine
                if e2.code != "ResourceInUseException":
                    raise
        deadline = time.monotonic() + wait_s
        while self._call("describe_table", TableName=self.table)["Table"]["TableStatus"] != "ACTIVE":
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"table {self.table} not ACTIVE after {wait_s:.0f} s")
            time.sleep(0.2)

    def put_items(self, items: Iterable[dict]) -> int:
        """Store items (from prediction_item/actual_item) whose key is not stored yet; the first of repeated
        keys wins. Returns how many were new. After an exception part may be written: repeating the same call is
        safe and completes it."""
        unique: dict[tuple[str, str], dict] = {}
        for it in items:
            unique.setdefault((it["pk"]["S"], it["sk"]["S"]), it)
        todo = list(unique.values())
        chunks = [todo[i:i + _GET_CHUNK] for i in range(0, len(todo), _GET_CHUNK)]
        run = self._pool.map if self._pool else map
        return sum(run(self._put_new, chunks))

    def _put_new(self, chunk: list[dict]) -> int:
        keys = [{"pk": it["pk"], "sk": it["sk"]} for it in chunk]
        stored = {(k["pk"]["S"], k["sk"]["S"]) for k in self._batch_get(keys, "pk, sk")}
        new = [it for it in chunk if (it["pk"]["S"], it["sk"]["S"]) not in stored]
        for i in range(0, len(new), _WRITE_CHUNK):
            request = {self.table: [{"PutRequest": {"Item": it}} for it in new[i:i + _WRITE_CHUNK]]}
            for attempt in range(8):
                request = self._call("batch_write_item", RequestItems=request).get("UnprocessedItems") or {}
                if not request:
                    break
                time.sleep(0.05 * 2 ** attempt)  # throttled: back off, resend only what was left
            if request:
                raise StoreUnavailable(f"{self.table}: writes still unprocessed after 8 tries (throttled)")
        return len(new)

    def _batch_get(self, keys: list[dict], projection: str | None = None) -> list[dict]:
        req = {"Keys": keys, "ConsistentRead": True}
        if projection:
            req |= {"ProjectionExpression": projection}
        out, pending = [], {self.table: req}
        for attempt in range(8):
            r = self._call("batch_get_item", RequestItems=pending)
            out += r.get("Responses", {}).get(self.table, [])
            pending = r.get("UnprocessedKeys") or {}
            if not pending:
                return out
            time.sleep(0.05 * 2 ** attempt)
        raise StoreUnavailable(f"{self.table}: reads still unprocessed after 8 tries (throttled)")

    def put_predictions(self, dataset: str, messages: Iterable[dict], served: bool = True) -> int:
        return self.put_items([prediction_item(dataset, m, served) for m in messages])

    def put_actuals(self, dataset: str, messages: Iterable[dict]) -> int:
        return self.put_items([actual_item(dataset, m) for m in messages])

    def lookup(self, dataset: str, request_id: str) -> dict | None:
        """Everything stored for one request, as plain JSON types; None when nothing is."""
        r = self._call("query", TableName=self.table, ConsistentRead=True, KeyConditionExpression="pk = :pk",
                       ExpressionAttributeValues={":pk": {"S": _pk(dataset, request_id)}})
        if not r.get("Items"):
            return None
        out = {"request_id": request_id, "dataset": dataset, "predictions": [], "actual": None, "actual_at": None}
        for item in map(_plain_item, r["Items"]):
            if item["sk"] == "actual":
                out["actual"], out["actual_at"] = item["actual"], item["actual_at"]
            else:
                out["predictions"].append({k: item.get(k) for k in (
                    "model_version", "model_name", "prediction", "probability", "served", "scored_at",
                    "event_time", "input_sha256")})
        out["predictions"].sort(key=lambda p: (not p["served"], p["scored_at"] or ""))
        return out

    def served_hashes(self, dataset: str, request_ids: Iterable[str]) -> dict[str, set[str]]:
        """request_id -> the input_sha256 of every served prediction stored for it (ids with none are left out):
        what the feedback loop checks a request's bytes against. One query per id, on the store's threads."""
        def one(rid: str) -> tuple[str, set[str]]:
            r = self._call("query", TableName=self.table, ConsistentRead=True,
                           KeyConditionExpression="pk = :pk AND begins_with(sk, :s)",
                           ProjectionExpression="input_sha256",
                           ExpressionAttributeValues={":pk": {"S": _pk(dataset, rid)}, ":s": {"S": "served#"}})
            return rid, {it["input_sha256"]["S"] for it in r.get("Items", []) if "S" in it.get("input_sha256", {})}

        run = self._pool.map if self._pool else map
        return {rid: shas for rid, shas in run(one, list(request_ids)) if shas}

    def items(self, dataset: str) -> Iterator[dict]:
        """Every stored item of a dataset as plain values (a full scan: for tests, audits and benchmarks)."""
        kw = {"TableName": self.table, "FilterExpression": "begins_with(pk, :d)", "ConsistentRead": True,
              "ExpressionAttributeValues": {":d": {"S": _pk(dataset, "x")[:-1]}}}
        while True:
            r = self._call("scan", **kw)
            yield from map(_plain_item, r.get("Items", []))
            if not r.get("LastEvaluatedKey"):
                return
            kw["ExclusiveStartKey"] = r["LastEvaluatedKey"]

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown(wait=True)
        self.client.close()
