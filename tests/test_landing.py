"""The landing-zone decision (pure): what is new, what waits, what is rejected and why."""

import pytest

from ml_platform.data.ingest import RejectedFile, check_header
from ml_platform.data.landing import Cursor, partition_key, plan_landing
from ml_platform.stores import FileInfo

NOW = 1_000_000 * 10**9
OLD = NOW - 60 * 10**9


@pytest.fixture
def header(specs):
    return (",".join(specs["used_cars"].column_names) + "\n").encode()


START = Cursor()


def plan(specs, files, heads, known=(), cursor=START, **kw):
    def read_head(name):
        h = heads[name]
        if isinstance(h, Exception):
            raise h
        return h
    return plan_landing(specs["used_cars"], cursor, files, set(known), NOW, read_head, **kw)


def test_new_settled_files_become_partitions_in_arrival_order(specs, header):
    row = header + b"x" * 10 + b"\n"
    files = [FileInfo("b.csv", len(row), OLD + 2), FileInfo("a.csv", len(row), OLD + 1)]
    p = plan(specs, files, {"a.csv": row, "b.csv": row})
    assert [k for k, _ in p.new] == ["a", "b"]
    assert p.cursor == Cursor(OLD + 2)
    again = plan(specs, files, {}, known={"a", "b"}, cursor=p.cursor)  # nothing is read twice
    assert again.new == [] and again.rejected == [] and again.already_ingested == []


def test_files_being_written_wait(specs, header):
    files = [FileInfo("young.csv", 10, NOW - 10**9), FileInfo(".batch.csv.tmp", 10, OLD),
             FileInfo("x.csv._COPYING_", 10, OLD), FileInfo("up.csv.part", 10, OLD)]
    p = plan(specs, files, {})
    assert p.new == [] and p.rejected == []
    assert sorted(p.waiting) == sorted(f.name for f in files)
    assert p.cursor == Cursor()  # the cursor never passes a file that may still change


@pytest.mark.parametrize("name, head, reason", [
    ("..evil.csv", None, "contains '..'"),
    ("a..b.csv", None, "contains '..'"),
    ("notes.txt", None, "not a .csv file"),
    ("empty.csv", b"", "empty file"),
    ("bin.csv", b"\x89PNG\r\n\x1a\n\x00\x00", "binary content"),
    ("semi.csv", b"vin;price;year;listing_id\n1;2;3;4\n", "wrong delimiter: the header is semicolon-separated"),
    ("notarget.csv", b"vin,year,listing_id\n1,2,3\n", "missing target column ['price']"),
    ("latin1.csv", b"vin,price\n\xe9t\xe9 caf\xe9,1\n" + b"x" * 100, "not UTF-8"),
])
def test_bad_files_are_rejected_with_reason(specs, name, head, reason):
    head = head if head is not None else b"a,b\n1,2\n"
    p = plan(specs, [FileInfo(name, len(head), OLD)], {name: head})
    assert p.new == []
    assert len(p.rejected) == 1 and reason in p.rejected[0][1]


def test_header_only_and_unreadable(specs, header):
    p = plan(specs, [FileInfo("h.csv", len(header), OLD), FileInfo("locked.csv", 99, OLD + 1)],
             {"h.csv": header, "locked.csv": PermissionError(13, "Permission denied")})
    reasons = dict((f.name, r) for f, r in p.rejected)
    assert "header only" in reasons["h.csv"]
    assert reasons["locked.csv"] == "unreadable: Permission denied"


def test_a_lost_cursor_neither_reingests_nor_quarantines(specs, header):
    row = header + b"1\n"
    files = [FileInfo(f"batch-{i}.csv", len(row), OLD + i) for i in range(3)]
    p = plan(specs, files, {f.name: row for f in files}, known={"batch-0", "batch-1"})
    assert [k for k, _ in p.new] == ["batch-2"] and p.rejected == []
    assert p.already_ingested == ["batch-0.csv", "batch-1.csv"]


def test_backlog_drains_max_new_per_tick(specs, header):
    row = header + b"1\n"
    files = [FileInfo(f"f{i:03d}.csv", len(row), OLD + i) for i in range(7)]
    heads = {f.name: row for f in files}
    first = plan(specs, files, heads, max_new=3)
    assert len(first.new) == 3 and first.backlog == 4
    second = plan(specs, files, heads, known={k for k, _ in first.new}, cursor=first.cursor, max_new=3)
    assert [k for k, _ in second.new] == ["f003", "f004", "f005"] and second.backlog == 1


def test_partition_keys_are_safe_and_distinct():
    assert partition_key("batch-00001.csv") == "batch-00001"
    odd = ["bätch 1.csv", "batch_1.csv", "batch 1.csv", "ñandú.csv", "日本.csv"]
    keys = [partition_key(n) for n in odd]
    assert len(set(keys)) == len(keys)
    for k in keys:
        assert k and all(c.isascii() and (c.isalnum() or c in "._-") for c in k)


def test_unicode_and_space_names_land(specs, header):
    row = header + b"1\n"
    p = plan(specs, [FileInfo("lot 7 – März.csv", len(row), OLD)], {"lot 7 – März.csv": row})
    assert len(p.new) == 1 and p.new[0][0].startswith("lot_7_")


def test_header_check_reports_missing_and_extra(specs, header):
    cols = [c for c in specs["used_cars"].column_names if c != "bed"] + ["surprise"]
    h = check_header((",".join(cols) + "\n1\n").encode(), specs["used_cars"], 10**6)
    assert h.missing == ["bed"] and h.extra == ["surprise"]
    with pytest.raises(RejectedFile, match="duplicate header"):
        check_header(b"price,price,listing_id,year\n1,2,3,4\n", specs["used_cars"], 100)


def test_a_file_moved_in_with_an_old_time_is_found(specs, header):
    """HDFS keeps a file's mtime across a rename: the name, not the time, says it is new."""
    row = header + b"1\n"
    later = FileInfo("later.csv", len(row), OLD + 50)
    first = plan(specs, [later], {"later.csv": row})
    assert first.cursor.seen_ns == OLD + 50
    moved = FileInfo("moved.csv", len(row), OLD + 10)  # written before `later`, renamed in after it was handled
    second = plan(specs, [later, moved], {"moved.csv": row}, known={"later"}, cursor=first.cursor)
    assert moved.mtime_ns < first.cursor.seen_ns and [k for k, _ in second.new] == ["moved"]
    assert second.already_ingested == [] and second.cursor.seen_ns == OLD + 50


def test_a_known_name_landing_again_is_skipped_and_said_once(specs, header):
    row = header + b"1\n"
    again = FileInfo("a.csv", len(row), OLD + 9)  # a correction under the handled name, after the cursor
    p = plan(specs, [again], {}, known={"a"}, cursor=Cursor(OLD + 5))
    assert p.new == [] and p.already_ingested == ["a.csv"] and p.cursor.seen_ns == OLD + 9
    assert plan(specs, [again], {}, known={"a"}, cursor=p.cursor).already_ingested == []


def test_a_rejected_file_left_in_place_is_not_reread_until_it_changes(specs, header):
    """When the quarantine move fails the file stays; the cursor holds it so each tick does not re-read it."""
    bad = FileInfo("bad.csv", 3, OLD)
    first = plan(specs, [bad], {"bad.csv": b"x\n"})
    assert len(first.rejected) == 1 and first.cursor.held == {"bad.csv": (3, OLD)}
    second = plan(specs, [bad], {}, cursor=first.cursor)  # an empty head map: a read would raise KeyError
    assert second.rejected == [] and second.new == [] and second.cursor.held == first.cursor.held
    fixed = FileInfo("bad.csv", len(header) + 2, OLD + 7)
    third = plan(specs, [fixed], {"bad.csv": header + b"1\n"}, cursor=second.cursor)
    assert [k for k, _ in third.new] == ["bad"] and third.cursor.held == {}
    assert plan(specs, [], {}, cursor=first.cursor).cursor.held == {}  # quarantined at last: forgotten


def test_ten_thousand_known_files_cost_no_reads(specs, header):
    import time

    row = header + b"1\n"
    files = [FileInfo(f"batch-{i:05d}.csv", len(row), OLD - i) for i in range(10_000)]
    files.append(FileInfo("fresh.csv", len(row), OLD + 1))
    reads = []

    def read_head(name):
        reads.append(name)
        return row

    known = {f"batch-{i:05d}" for i in range(10_000)}
    t0 = time.perf_counter()
    p = plan_landing(specs["used_cars"], Cursor(OLD), files, known, NOW, read_head)
    elapsed = time.perf_counter() - t0
    assert reads == ["fresh.csv"] and [k for k, _ in p.new] == ["fresh"] and p.already_ingested == []
    assert len(p.cursor.dump()) < 100  # the cursor does not grow with the landing zone
    assert elapsed < 2.0, f"planning over 10,000 landed files took {elapsed:.2f}s"


def test_cursor_survives_garbage_and_reads_the_old_format():
    assert Cursor.parse("not json") == Cursor()
    assert Cursor.parse('{"seen_ns": 5, "held": {"x.csv": [1]}}') == Cursor()
    assert Cursor.parse('["a list"]') == Cursor()
    held = Cursor(5, {"bad.csv": (3, 4)})
    assert Cursor.parse(held.dump()) == held
    # a Dagster instance from before keeps the time cursor: its time carries over, names then decide
    assert Cursor.parse('{"arrival_ns": 1700000000000000000, "name": "batch-00007.csv"}') == Cursor(
        1700000000000000000)
