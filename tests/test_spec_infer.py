"""`ml-platform spec infer`: guesses from a sample, bad input refused in one line, and the starter spec it writes
loads and cleans its own file into 0/1 labels."""

import random

import pytest
import yaml

from ml_platform.cli import main
from ml_platform.spec import load_spec


@pytest.fixture
def loans_csv(tmp_path):
    """A tiny loan book unlike any other test's data: a pandas-style unnamed index, an id, money with thousands
    separators and a currency sign, a date, a unit, free text, a category, a 0/1 flag and 'good'/'bad' labels."""
    rng = random.Random(11)
    lines = [",loan_ref,amount,fee,opened,term,memo,grade,has_cosigner,outcome"]
    for i in range(80):
        outcome = "bad" if i % 4 == 0 else "good"
        memo = " ".join(rng.choice(["car", "repair", "wedding", "school", "roof", "debt"]) for _ in range(8))
        lines.append(f'{i},L-{5000 + i},"{rng.randint(1_000, 90_000):,}","${rng.randint(10, 2_000):,}",'
                     f'2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d},{rng.choice([12, 24, 36])} mo,'
                     f'"{memo} #{i}",{rng.choice("ABC")},{rng.choice("01")},{outcome}')
    p = tmp_path / "loan_book.csv"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_infer_guesses_each_column_and_says_why(loans_csv, tmp_path):
    out = tmp_path / "specs" / "loans.yaml"
    assert main(["spec", "infer", str(loans_csv), "--target", "outcome", "--out", str(out), "--name", "loans"]) == 0
    spec = load_spec(out)
    parse = {c.name: (c.parse, c.unit, c.format, c.strip, c.position) for c in spec.columns}
    assert parse == {
        "row_index": ("drop", None, None, None, 0),
        "loan_ref": ("string", None, None, None, None),
        "amount": ("number", None, None, None, None),
        "fee": ("number", None, None, "$", None),
        "opened": ("date", None, "yyyy-MM-dd", None, None),
        "term": ("unit", "mo", None, None, None),
        "memo": ("drop", None, None, None, None),
        "grade": ("category", None, None, None, None),
        "has_cosigner": ("bool", None, None, None, None),
        "outcome": ("category", None, None, None, None),
    }
    assert (spec.name, spec.task, spec.key, spec.classes, spec.positive) == \
        ("loans", "classification", "loan_ref", ("good", "bad"), None)
    text = out.read_text()
    assert "# 100% of 80 sampled values parse as numbers" in text and "free text" in text
    assert "'bad' is positive because its name reads as the event to detect" in text
    assert set(spec.algorithms) == {"logistic", "random_forest", "gbt"}


def test_infer_task_and_positive_label_rules(tmp_path):
    from ml_platform.spec_infer import guess_target

    assert guess_target("y", ["1.5", "2", "7", "3"])[0]["task"] == "regression"
    assert guess_target("y", ["$1,200", "$900", "$30"])[0]["parse"] == {"parse": "number", "strip": "$"}
    zero_one = guess_target("y", ["0", "1", "1"])[0]
    assert zero_one["parse"] == {"parse": "number"} and zero_one["label_range"] == [0, 1]
    assert guess_target("y", ["No", "Yes", "No"])[0]["classes"] == ["No", "Yes"]  # named like the event
    assert guess_target("y", ["cat", "dog", "dog"])[0]["classes"] == ["dog", "cat"]  # else the minority
    many, lines = guess_target("y", ["a", "b", "b", "c", "c", "c"])
    assert many["positive"] == "a" and "issue 14" in lines[-1]


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"\x00\x01\x02PK\x03\x04" * 50, "binary content"),
    (b"a,outcome\n", "header only"),
    (b"a,b\n1,2\n", "target 'outcome' is not a column of in.csv; columns: ['a', 'b']"),
    (b"a,outcome\n\xff\xfe,1\n", "not UTF-8 text"),
])
def test_infer_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, content, message):
    src, out = tmp_path / "in.csv", tmp_path / "out.yaml"
    src.write_bytes(content)
    assert main(["spec", "infer", str(src), "--target", "outcome", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_infer_never_overwrites_without_force(loans_csv, tmp_path, capsys):
    out = tmp_path / "loans.yaml"
    out.write_text("mine\n")
    assert main(["spec", "infer", str(loans_csv), "--target", "outcome", "--out", str(out)]) == 2
    assert out.read_text() == "mine\n" and "--force" in capsys.readouterr().err
    assert main(["spec", "infer", str(loans_csv), "--target", "outcome", "--out", str(out), "--force"]) == 0
    assert yaml.safe_load(out.read_text())["target"] == "outcome"


def test_unknown_dataset_lists_datasets_and_broken_specs(loans_csv, tmp_path, capsys):
    d = tmp_path / "specs"
    assert main(["spec", "infer", str(loans_csv), "--target", "outcome", "--out", str(d / "loans.yaml")]) == 0
    (d / "typo.yaml").write_text((d / "loans.yaml").read_text().replace("max_quarantine_share",
                                                                        "max_quarantine_shares"))
    with pytest.raises(SystemExit) as e:
        main(["--specs", str(d), "tail", "cars"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"unknown dataset 'cars'; datasets in {d}: ['loan_book']" in err
    assert "broken spec typo.yaml" in err and "checks has unknown field 'max_quarantine_shares'" in err
    assert main(["spec", "check", str(d)]) == 1


def test_inferred_spec_cleans_its_file_into_0_1_labels(spark, loans_csv, tmp_path):
    from pyspark.sql import functions as F

    from ml_platform.data.cleaning import REASON, classify, cleaned_rows
    from ml_platform.data.ingest import check_header, read_csv

    out = tmp_path / "loans.yaml"
    assert main(["spec", "infer", str(loans_csv), "--target", "outcome", "--out", str(out)]) == 0
    spec = load_spec(out)
    header = check_header(loans_csv.read_bytes()[:65536], spec, loans_csv.stat().st_size)
    assert header.columns[0] == "row_index"  # the empty header cell, named by position
    c = classify(read_csv(spark, str(loans_csv), header, spec), spec)
    assert c.filter(F.col(REASON).isNotNull()).count() == 0
    rows = {r["loan_ref"]: r for r in cleaned_rows(c, spec).collect()}
    assert len(rows) == 80
    assert {k: r["outcome"] for k, r in rows.items()} == {f"L-{5000 + i}": 1.0 if i % 4 == 0 else 0.0
                                                          for i in range(80)}
    first = rows["L-5000"]
    assert first["amount"] >= 1000 and first["fee"] >= 10 and first["term"] in (12.0, 24.0, 36.0)
    assert first["opened"].year == 2024 and isinstance(first["has_cosigner"], bool)
