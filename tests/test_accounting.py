"""Batch accounting (pure): one state per landed file from run facts and store facts, the retry backoff, the
summary and the table; and the store reader over a real local store."""

import time
from dataclasses import replace
from types import SimpleNamespace

from ml_platform.data.accounting import (
    STATES,
    Batch,
    RunFact,
    StoreFacts,
    account,
    read_store_facts,
    render_table,
    retry_due,
    summarize,
)
from ml_platform.layout import accepted_marker, batch_record_path, landed_file, rejected_marker
from ml_platform.stores import FileInfo, open_store

SPEC = SimpleNamespace(name="used_cars")
NOW = 1_700_000_000.0


def landed(*names, at=NOW - 600):
    return [FileInfo(n, 10, int(at * 1e9)) for n in names]


def facts(landed=(), quarantined=None, ingested=(), superseded=None, accepted=None, not_accepted=None):
    return StoreFacts(list(landed), quarantined or {}, set(ingested), superseded or {}, accepted or {},
                      not_accepted or {})


def run(key, status, created, layer="raw_batches", **kw):
    ended = kw.pop("ended", created + 10 if status not in ("QUEUED", "STARTED") else None)
    return RunFact(run_id=f"r-{key}-{layer}-{created:.0f}", partition=key, layer=layer, status=status,
                   created=created, ended=ended, **kw)


def one(f, known=(), runs=(), now=NOW, **kw) -> Batch:
    out = account(SPEC, f, set(known), list(runs), now, **kw)
    assert len(out) == 1, out
    return out[0]


def test_files_the_sensor_has_not_picked_up_wait_and_say_why():
    b = one(facts(landed("a.csv")))
    assert (b.state, b.key, b.next_layer, b.attempts) == ("waiting", "a", None, 0)
    assert "not yet picked up by the sensor" in b.reason and b.since == NOW - 600
    t = one(facts(landed(".a.csv.tmp")))
    assert t.state == "waiting" and "still being written" in t.reason


def test_quarantined_by_the_sensor_keeps_its_reason_unless_landed_again():
    f = facts(quarantined={"bad.csv": ("missing columns: price", NOW - 100)})
    b = one(f)
    assert (b.state, b.file, b.reason, b.since) == ("quarantined", "bad.csv", "missing columns: price", NOW - 100)
    again = one(replace(f, landed=landed("bad.csv", at=NOW - 10)))  # a fixed file under the same name
    assert again.state == "waiting" and "not yet picked up" in again.reason


def test_accepted_superseded_and_not_accepted_come_from_the_store():
    f = facts(landed("a.csv", "b.csv", "c.csv"), ingested={"a", "b", "c"}, accepted={"a": NOW - 50},
              superseded={"b": "a"}, not_accepted={"c": "cleaned_rows: 0 rows"})
    by = {b.key: b for b in account(SPEC, f, {"a", "b", "c"}, [], NOW)}
    assert (by["a"].state, by["a"].since, by["a"].reason) == ("accepted", NOW - 50, "accepted for training")
    assert by["b"].state == "superseded" and by["b"].reason == "same content as batch a"
    assert by["c"].state == "quarantined" and "cleaned_rows: 0 rows" in by["c"].reason
    assert "quarantine/used_cars/rows where _batch = 'c'" in by["c"].reason
    assert all(b.next_layer is None for b in by.values())


def test_a_file_landed_twice():
    # the same content under a second name repeats the first batch
    f = facts(landed("a.csv", "a-copy.csv"), ingested={"a", "a-copy"}, accepted={"a": NOW - 300},
              superseded={"a-copy": "a"})
    states = {b.file: b.state for b in account(SPEC, f, {"a", "a-copy"}, [], NOW)}
    assert states == {"a.csv": "accepted", "a-copy.csv": "superseded"}
    # the same name landed again after it was accepted is never ingested again: said so, still accepted
    b = one(facts(landed("a.csv", at=NOW - 5), ingested={"a"}, accepted={"a": NOW - 300}), known={"a"})
    assert b.state == "accepted" and "landed again" in b.reason and "new name" in b.reason


def test_runs_in_flight_are_running_or_queued():
    f = facts(landed("a.csv"))
    b = one(f, known={"a"}, runs=[run("a", "STARTED", NOW - 30)])
    assert (b.state, b.since, b.run_id, b.next_layer) == ("running", NOW - 30, "r-a-raw_batches-1699999970", None)
    q = one(f, known={"a"}, runs=[run("a", "QUEUED", NOW - 20, "cleaned_features"), run("a", "SUCCESS", NOW - 90)])
    assert q.state == "waiting" and q.reason.startswith("queued as run r-a-cleaned_features") and q.next_layer is None
    # a run of another layer or another dataset's key (partition None) does not count
    other = RunFact("x", None, "training_set", "STARTED", NOW - 5)
    assert one(f, known={"a"}, runs=[other]).state == "waiting"


def test_a_refused_batch_is_quarantined_and_never_failed():
    runs = [run("a", "FAILURE", NOW - 100 * i, refused="raw_rows: 0 rows") for i in range(1, 6)]
    b = one(facts(landed("a.csv")), known={"a"}, runs=runs)
    assert b.state == "quarantined" and "raw_rows: 0 rows" in b.reason and b.attempts == 0
    assert retry_due([b], runs, NOW) == []


def test_failures_retry_with_backoff_then_fail():
    f = facts(landed("a.csv"), ingested={"a"})
    t0 = NOW - 1000
    fails = [run("a", "FAILURE", t0, "cleaned_features", error="Py4JError: boom")]
    b = one(f, known={"a"}, runs=fails)
    assert (b.state, b.attempts, b.next_layer) == ("waiting", 1, "cleaned_features")
    assert "retry 1 of 3" in b.reason and "boom" in b.reason
    assert retry_due([b], fails, t0 + 10 + 29) == [] and retry_due([b], fails, t0 + 10 + 30) == [b]
    fails.append(run("a", "FAILURE", t0 + 100, "cleaned_features"))  # second failure: 60 s after it ended
    b = one(f, known={"a"}, runs=fails)
    assert b.attempts == 2 and "boom" in b.reason  # the newest failure had no message: an older one is shown
    assert retry_due([b], fails, t0 + 110 + 59) == [] and retry_due([b], fails, t0 + 110 + 60) == [b]
    fails += [run("a", "FAILURE", t0 + 300, "cleaned_features", error="OOM"),
              run("a", "FAILURE", t0 + 600, "cleaned_features", error="OOM again")]
    b = one(f, known={"a"}, runs=fails)
    assert (b.state, b.attempts, b.reason, b.since) == ("failed", 4, "OOM again", t0 + 610)
    assert retry_due([b], fails, NOW + 10**6) == []
    # a canceled run is no attempt; a refusal is none either
    assert one(f, known={"a"}, runs=[run("a", "CANCELED", t0)]).attempts == 0


def test_dagster_retrying_the_newest_failure_keeps_it_waiting():
    fails = [run("a", "FAILURE", NOW - 400 + 10 * i, will_retry=(i == 3)) for i in range(4)]
    b = one(facts(landed("a.csv")), known={"a"}, runs=fails)
    assert b.state == "waiting" and "Dagster will retry" in b.reason and b.next_layer is None
    assert retry_due([b], fails, NOW) == []


def test_known_partitions_wait_for_the_next_layer():
    b = one(facts(landed("a.csv")), known={"a"})
    assert (b.state, b.next_layer, b.reason) == ("waiting", "raw_batches", "ingestion not started")
    c = one(facts(landed("a.csv"), ingested={"a"}), known={"a"}, runs=[run("a", "SUCCESS", NOW - 200)])
    assert (c.state, c.next_layer, c.reason, c.since) == ("waiting", "cleaned_features", "cleaning not started",
                                                          NOW - 190)
    assert retry_due([c], [run("a", "SUCCESS", NOW - 200)], NOW) == [c]
    assert retry_due([c], [run("a", "STARTED", NOW - 2)], NOW) == []  # a run started since the accounting


def test_a_key_with_no_file():
    b = one(facts(), known={"gone"})
    assert (b.file, b.key, b.state, b.next_layer) == ("", "gone", "waiting", "raw_batches")
    assert "no longer in landing/used_cars/" in b.reason
    a = one(facts(ingested={"gone"}, accepted={"gone": NOW - 9}), known={"gone"})
    assert (a.file, a.state) == ("", "accepted")


def test_summarize_counts_every_state_and_the_queue():
    f = facts(landed("a.csv", "b.csv", "c.csv", "d.csv"), ingested={"a"}, accepted={"a": NOW - 5})
    runs = [run("b", "STARTED", NOW - 30), run("c", "QUEUED", NOW - 20),
            RunFact("t", None, "training_set", "QUEUED", NOW - 1)] + \
        [run("d", "FAILURE", NOW - 900 + i, error="boom") for i in range(4)]
    batches = account(SPEC, f, {"a", "b", "c", "d"}, runs, NOW)
    s = summarize(batches, runs, NOW)
    assert set(s["counts"]) == set(STATES)
    assert s["counts"] == {"waiting": 1, "running": 1, "accepted": 1, "quarantined": 0, "failed": 1, "superseded": 0}
    assert s["queue_depth"] == 2 and s["in_flight"] == 3
    assert s["oldest_unhandled_age_s"] == 900 - 3 - 10
    assert s["failed"] == [{"file": "d.csv", "key": "d", "attempts": 4, "reason": "boom"}]
    assert summarize([], [], NOW)["oldest_unhandled_age_s"] is None


def test_render_table_puts_failures_first_and_cuts_reasons():
    bs = [Batch("a.csv", "a", "accepted", NOW - 60, "accepted for training", 0, None, None),
          Batch("b.csv", "b", "failed", NOW - 7200, "x" * 500, 4, "r1", None)]
    lines = render_table(bs, NOW, width=100).splitlines()
    assert lines[0].split()[:5] == ["state", "file", "key", "age", "tries"]
    assert lines[1].startswith("failed") and " 2h " in lines[1] and lines[1].endswith("…")
    assert all(len(line) <= 100 for line in lines) and lines[2].startswith("accepted")


def test_ten_thousand_files_are_accounted_cheaply():
    n = 10_000
    names = [f"batch-{i:05d}.csv" for i in range(n)]
    keys = {f"batch-{i:05d}" for i in range(n)}
    f = facts(landed(*names), ingested=keys, accepted={k: NOW - 1 for k in list(keys)[: n // 2]})
    runs = [run(f"batch-{i:05d}", "SUCCESS", NOW - 100 - i, layer) for i in range(n)
            for layer in ("raw_batches", "cleaned_features")][:2000]
    t = time.perf_counter()
    batches = account(SPEC, f, keys, runs, NOW)
    due = retry_due(batches, runs, NOW)
    s = summarize(batches, runs, NOW)
    table = render_table(batches, NOW)
    took = time.perf_counter() - t
    assert len(batches) == n and s["counts"]["accepted"] == n // 2 and s["counts"]["waiting"] == n // 2
    assert len(due) == n // 2 and table.count("\n") == n
    assert took < 2.0, took


def test_read_store_facts_from_a_local_store(tmp_path):
    from ml_platform.data.layers import quarantine_file

    store = open_store(str(tmp_path))
    for name in ("a.csv", "b.csv", "c.csv", "d.csv", "bad.txt"):
        store.write_text(landed_file(SPEC, name), "x\n")
    quarantine_file(store, SPEC, "bad.txt", "not a .csv file")
    store.write_text(landed_file(SPEC, "bad.txt"), "again\n")  # landed and quarantined again: the newest reason
    quarantine_file(store, SPEC, "bad.txt", "still not a .csv file")
    for k, dup in (("a", None), ("b", "a"), ("c", None)):
        store.write_json(batch_record_path(SPEC, k), {"partition": k, "duplicate_of": dup})
    store.write_json(accepted_marker(SPEC, "a"), {"partition": "a"})
    store.write_json(rejected_marker(SPEC, "c"), {"partition": "c", "why": ["null_rates: price 90% null", "x: y"]})
    store.write_json(rejected_marker(SPEC, "b"), {"partition": "b", "why": ["duplicate of batch a"]})
    f = read_store_facts(store, SPEC)
    assert sorted(x.name for x in f.landed) == ["a.csv", "b.csv", "c.csv", "d.csv"]
    assert list(f.quarantined) == ["bad.txt"] and f.quarantined["bad.txt"][0] == "still not a .csv file"
    assert abs(f.quarantined["bad.txt"][1] - time.time()) < 60
    assert f.ingested == {"a", "b", "c"} and f.superseded == {"b": "a"} and set(f.accepted) == {"a"}
    assert f.not_accepted == {"c": "null_rates: price 90% null; x: y"}
    states = {b.file: b.state for b in account(SPEC, f, {"a", "b", "c", "d"}, [], time.time())}
    assert states == {"a.csv": "accepted", "b.csv": "superseded", "c.csv": "quarantined", "d.csv": "waiting",
                      "bad.txt": "quarantined"}
    empty = read_store_facts(open_store(str(tmp_path / "nothing")), SPEC)
    assert empty.landed == [] and empty.quarantined == {} and empty.accepted == {}


def test_the_cleaning_verdict_is_one_marker_or_the_other(tmp_path):
    from ml_platform.data.silver import mark_accepted

    store = open_store(str(tmp_path))
    mark_accepted(store, SPEC, "k", False, {}, why=["quarantine_share: 60% of rows"])
    rejected = store.read_json(rejected_marker(SPEC, "k"))
    assert (rejected["partition"], rejected["why"]) == ("k", ["quarantine_share: 60% of rows"])
    assert read_store_facts(store, SPEC).not_accepted == {"k": "quarantine_share: 60% of rows"}
    mark_accepted(store, SPEC, "k", True, {"cleaned": 3})  # cleaned again after the spec was fixed
    assert not store.exists(rejected_marker(SPEC, "k")) and store.read_json(accepted_marker(SPEC, "k"))["cleaned"] == 3
    mark_accepted(store, SPEC, "k", False, {})
    assert not store.exists(accepted_marker(SPEC, "k")) and store.read_json(rejected_marker(SPEC, "k"))["why"]
