"""Cleaning on Spark: parsing keeps signs and units, bad rows are quarantined with reasons, nothing is lost."""

import pytest
from pyspark.sql import functions as F

from ml_platform.data.checks import cleaned_checks, expected_schema
from ml_platform.data.cleaning import REASON, classify, clean_batch, cleaned_rows, quarantined_rows
from ml_platform.data.ingest import check_header, read_csv


def _rows(spark, spec, records: list[dict]):
    cols = spec.column_names
    data = [tuple(r.get(c, "") for c in cols) for r in records]
    return spark.createDataFrame(data, schema=", ".join(f"`{c}` string" for c in cols))


GOOD = {"listing_id": "1", "price": "23,450", "year": "2017", "listed_date": "2020-06-01", "mileage": "30,000",
        "longitude": "-122.33", "latitude": "47.6", "back_legroom": "35.1 in", "fuel_tank_volume": "12.7 gal",
        "maximum_seating": "5 seats", "power": "177 hp @ 5,750 RPM", "torque": "200 lb-ft @ 1,750 RPM",
        "is_new": "False", "has_accidents": "True", "bed_length": "--", "make_name": " Toyota "}


def test_parsing_keeps_signs_units_and_derives(spark, specs):
    spec = specs["used_cars"]
    row = clean_batch(_rows(spark, spec, [GOOD]), spec).first().asDict()
    assert row["longitude"] == -122.33  # the old cleaning made every US longitude positive
    assert row["price"] == 23450.0 and row["mileage"] == 30000.0
    assert (row["back_legroom"], row["fuel_tank_volume"], row["maximum_seating"]) == (35.1, 12.7, 5.0)
    assert (row["power_hp"], row["power_rpm"], row["torque_lbft"], row["torque_rpm"]) == (177, 5750, 200, 1750)
    assert row["is_new"] is False and row["has_accidents"] is True
    assert row["bed_length"] is None and row["make_name"] == "Toyota"
    assert str(row["listed_date"]) == "2020-06-01"
    assert row["age"] == 3.0 and row["miles_per_year"] == 10000.0


@pytest.mark.parametrize("change, reason", [
    ({"price": "1"}, "price: 1 outside"),
    ({"price": "3,000,000"}, "price: 3,000,000 outside"),
    ({"price": "call us"}, "price: missing or not a number 'call us'"),
    ({"price": "NaN"}, "price: missing or not a number"),
    ({"year": "unknown"}, "year: missing or invalid value 'unknown'"),
    ({"year": "1850"}, "year: missing or invalid value '1850'"),
    ({"listing_id": ""}, "listing_id: missing"),
])
def test_bad_values_are_quarantined_with_reason(spark, specs, change, reason):
    spec = specs["used_cars"]
    c = classify(_rows(spark, spec, [GOOD | change]), spec)
    assert cleaned_rows(c, spec).count() == 0
    q = quarantined_rows(c).first()
    assert reason in q[REASON]
    assert q["price"] == (GOOD | change)["price"]  # quarantined rows are kept as they arrived


def test_unparseable_optional_values_become_null_not_rejections(spark, specs):
    spec = specs["used_cars"]
    row = clean_batch(_rows(spark, spec, [GOOD | {"back_legroom": "roomy", "longitude": "-999",
                                                  "power": "lots"}]), spec).first()
    assert row["back_legroom"] is None and row["longitude"] is None and row["power_hp"] is None


def test_fraud_labels_quoted_and_out_of_range(spark, specs):
    spec = specs["fraud"]
    base = {c: "0.5" for c in spec.column_names}
    rows = [base | {"Class": "'1'"}, base | {"Class": "0", "Time": "1"}, base | {"Class": "2"},
            base | {"Class": "0.5"}]
    c = classify(_rows(spark, spec, rows), spec)
    assert sorted(r["Class"] for r in cleaned_rows(c, spec).collect()) == [0.0, 1.0]
    reasons = " | ".join(sorted(r[REASON] for r in quarantined_rows(c).collect()))
    assert "Class: 2 outside [0, 1]" in reasons and "Class: not a class label 0.5" in reasons


def test_simulated_batch_accounts_for_every_row(spark, specs, tmp_path, used_cars_csv):
    spec = specs["used_cars"]
    p = tmp_path / "b.csv"
    p.write_text(used_cars_csv)
    df = read_csv(spark, str(p), check_header(p.read_bytes()[:65536], spec, p.stat().st_size), spec)
    c = classify(df, spec).cache()
    n_in, good = c.count(), cleaned_rows(c, spec).count()
    q = quarantined_rows(c)
    n_q = q.count()
    accepted = c.filter(F.col(REASON).isNull())
    assert accepted.count() + n_q == n_in  # every parsed row is either accepted or quarantined
    assert good == accepted.select("listing_id").distinct().count()  # one row per key
    assert good < accepted.count()  # the simulator re-sends some listings
    reasons = {r[REASON].split(":")[0].split(" (")[0] for r in q.select(REASON).distinct().collect()}
    assert {"year", "malformed CSV row"} <= reasons and "price" not in reasons  # the sentinels are unlabelled
    unlabelled = accepted.filter(F.col("price").isNull())
    assert unlabelled.count() > 0 and {r["__src_price"] for r in unlabelled.collect()} <= {"0", "99999999"}
    # a sentinel row repeats a good listing: the listing keeps its price
    assert cleaned_rows(c, spec).filter(F.col("price").isNull()).count() == 0
    malformed = q.filter(F.col(REASON).startswith("malformed")).count()
    assert q.filter(F.col("_corrupt_record").isNotNull()).count() == malformed
    assert c.filter(F.col(REASON).isNull() & (F.col("longitude") > 0)).count() == 0
    schema = {f.name: f.dataType.simpleString() for f in cleaned_rows(c, spec).schema.fields}
    assert schema == expected_schema(spec)
    c.unpersist()


def test_cleaned_checks_flag_what_is_wrong(specs):
    spec = specs["used_cars"]
    ok = {"duplicate_of": None, "rows_in": 100, "cleaned": 90, "quarantined": 10, "target_min": 600.0,
          "target_max": 90_000.0, "null_rate": {c: 0.0 for c in spec.cleaned_columns}, "all_null_columns": [],
          "schema": expected_schema(spec), "top_reasons": {}}
    assert all(o.passed for o in cleaned_checks(spec, ok))
    bad = ok | {"quarantined": 60, "cleaned": 40, "all_null_columns": ["bed"],
                "null_rate": ok["null_rate"] | {"mileage": 0.5}, "schema": ok["schema"] | {"year": "string"}}
    failed = {o.name: o for o in cleaned_checks(spec, bad) if not o.passed}
    assert set(failed) == {"quarantine_share", "null_rates", "cleaned_schema", "all_null_columns"}
    assert failed["quarantine_share"].blocking and not failed["all_null_columns"].blocking
    assert "mileage" in failed["null_rates"].description


@pytest.mark.parametrize("price", ["0", "99999999", "99,999,999"])
def test_sentinel_labels_are_unlabelled_not_bad(spark, specs, price):
    spec = specs["used_cars"]
    c = classify(_rows(spark, spec, [GOOD | {"price": price}]), spec)
    rows = cleaned_rows(c, spec).collect()
    assert quarantined_rows(c).count() == 0 and len(rows) == 1 and rows[0]["price"] is None


def _spec(**extra):
    from ml_platform.spec import parse_spec

    return parse_spec({"name": "t", "task": "classification", "target": "y", "key": "k", "columns": [
        {"name": "k", "parse": "string"}, {"name": "x", "parse": "number"}, {"name": "y", "parse": "category"}]}
        | extra, "t.yaml")


def _frame(spark, rows):
    return spark.createDataFrame(rows, schema="k string, x string, y string")


def test_rows_without_a_key_are_kept_and_only_real_duplicates_removed(spark):
    spec = _spec(classes=["good", "bad"])
    rows = [("a", "1", "good"), ("a", "2", "bad"),                      # one key twice: one duplicate
            (None, "1", "good"), (None, "2", "good"), (None, "3", "bad"),  # three different rows without a key
            (None, "3", "bad"), ("", "4", "good")]                        # a whole-row repeat; '' is a null key
    out = cleaned_rows(classify(_frame(spark, rows), spec), spec).collect()
    assert len(out) == 5  # 7 in, 2 real duplicates
    assert sorted(r["x"] for r in out if r["k"] is None) == [1.0, 2.0, 3.0, 4.0]


def test_text_labels_map_to_0_1_and_unknown_labels_are_quarantined(spark):
    spec = _spec(classes=["good", "bad"], unlabelled=["?"])
    rows = [("1", "1", "good"), ("2", "1", " bad "), ("3", "1", "meh"), ("4", "1", ""), ("5", "1", "?")]
    c = classify(_frame(spark, rows), spec)
    assert {r["k"]: r["y"] for r in cleaned_rows(c, spec).collect()} == {"1": 0.0, "2": 1.0, "5": None}
    reasons = {r["k"]: r[REASON] for r in quarantined_rows(c).collect()}
    assert reasons == {"3": "y: label 'meh' is not one of ['good', 'bad']", "4": "y: missing label"}
    one_vs_rest = _spec(positive="bad")
    labels = {r["k"]: r["y"] for r in cleaned_rows(classify(_frame(spark, rows), one_vs_rest), one_vs_rest).collect()}
    assert labels == {"1": 0.0, "2": 1.0, "3": 0.0, "5": 0.0}


GARBAGE = ["\x01\x02", "1e999", "-", "12..3", "abc", "2020-99-99", "@ RPM", "9" * 400, "💥", "in", " 3 gal ",
           "TRUE?", "NaN", "-Infinity", "1.2.3", "0x1F"]


def test_garbage_into_every_parse_rule_gives_nulls_and_reasons_not_a_crash(spark):
    from ml_platform.spec import parse_spec

    assert spark.conf.get("spark.sql.ansi.enabled") == "true"  # where a plain cast would abort the job
    spec = parse_spec({"name": "g", "task": "classification", "target": "y", "positive": "1", "columns": [
        {"name": "s", "parse": "string"}, {"name": "c", "parse": "category"}, {"name": "n", "parse": "number"},
        {"name": "u", "parse": "unit", "unit": "in"}, {"name": "b", "parse": "bool"}, {"name": "d", "parse": "date"},
        {"name": "r", "parse": "rating", "units": ["hp", "rpm"]}, {"name": "z", "parse": "drop"},
        {"name": "req", "parse": "number", "required": True}, {"name": "y", "parse": "category"}],
        "derived": [{"name": "per", "rule": "per_year", "from": ["n", "u"]}]}, "g.yaml")
    cols = spec.column_names
    df = spark.createDataFrame([tuple([g] * len(cols)) for g in GARBAGE], schema=", ".join(f"{c} string" for c in cols))
    c = classify(df, spec)
    rows = c.select(*spec.cleaned_columns, REASON).collect()
    assert len(rows) == len(GARBAGE)
    for r in rows:
        assert r["n"] is None and r["r_hp"] is None and r["r_rpm"] is None and r["d"] is None and r["per"] is None
        assert r["b"] is None and r["req"] is None and r[REASON].startswith("req: missing or invalid value")
        # any label but '1' is the negative class; 'NaN' is a missing token, so a missing label
        assert r["y"] == 0.0 if r["s"] is not None else r["y"] is None and "y: missing label" in r[REASON]
        assert r["u"] is None  # 'in' alone has no number, ' 3 gal ' is not in inches
    # a numeric 0/1 target fed garbage: reasons, not CAST_INVALID_INPUT
    numeric = parse_spec({"name": "g", "task": "classification", "target": "y", "label_range": [0, 1],
                          "columns": [{"name": "k", "parse": "string"}, {"name": "x", "parse": "number"},
                                      {"name": "y", "parse": "number"}]}, "g.yaml")
    q = quarantined_rows(classify(_frame(spark, [("1", g, g) for g in GARBAGE]), numeric)).collect()
    assert len(q) == len(GARBAGE) and all(r[REASON].startswith("y: missing or not a number") for r in q)
