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
    ({"price": "0"}, "price: 0 outside"),
    ({"price": "99999999"}, "price: 99999999 outside"),
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
    assert {"price", "year", "malformed CSV row"} <= reasons
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
