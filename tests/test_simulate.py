import io

import pandas as pd

from ml_platform.local.simulate import SimConfig, batch_text_chunks, next_batch_index, simulate


def _frame(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, on_bad_lines="skip", engine="python")


def test_same_seed_same_bytes_and_chunking_is_invisible():
    a = "".join(t for t, _, _ in batch_text_chunks(SimConfig("used_cars", 300, chunk_rows=100), 3))
    b = "".join(t for t, _, _ in batch_text_chunks(SimConfig("used_cars", 300, chunk_rows=100), 3))
    c = "".join(t for t, _, _ in batch_text_chunks(SimConfig("used_cars", 300, chunk_rows=100, seed=8), 3))
    assert a == b and a != c
    assert a.count("vin,back_legroom") == 1  # one header, however many chunks


def test_used_cars_formats_and_missing_patterns(specs):
    text = "".join(t for t, _, _ in batch_text_chunks(SimConfig("used_cars", 4000, broken_share=0.0), 1))
    df = _frame(text)
    assert list(df.columns) == specs["used_cars"].column_names
    assert df["back_legroom"].str.fullmatch(r"\d+\.\d in|--").all()
    assert df["fuel_tank_volume"].str.fullmatch(r"\d+\.\d gal|--").all()
    assert df["power"][df["power"] != ""].str.fullmatch(r"\d+ hp @ \d,\d{3} RPM").all()
    assert df["torque"][df["torque"] != ""].str.fullmatch(r"\d+ lb-ft @ \d,\d{3} RPM").all()
    assert (df["longitude"].astype(float) < 0).all()  # US longitudes are negative
    flags = df[["fleet", "frame_damaged", "has_accidents", "isCab", "salvage", "theft_title"]] == ""
    assert (flags.all(axis=1) == flags.any(axis=1)).all()  # missing together
    assert 0.40 < flags.all(axis=1).mean() < 0.56
    assert (df["bed"] == "").mean() > 0.95 and (df["cabin"] == "").mean() > 0.95
    assert (df["combine_fuel_economy"] == "").all() and (df["is_certified"] == "").all()
    assert df["description"].str.contains("\n").all() and df["description"].str.contains('"').all()
    price = df["price"].astype(float)
    assert price.mean() > price.median() * 1.05  # right-skewed


def test_broken_rows_are_present():
    text = "".join(t for t, _, _ in batch_text_chunks(SimConfig("used_cars", 3000, broken_share=0.01), 1))
    assert ",99999999," in text and ",unknown\n" in text and 'Sport 17" wheels' in text


def test_fraud_rate_duplicates_and_quoted_labels():
    text = "".join(t for t, _, _ in batch_text_chunks(SimConfig("fraud", 60_000, broken_share=0.0), 1))
    df = _frame(text)
    labels = df["Class"].str.strip("'")
    assert set(labels) == {"0", "1"}
    assert (df["Class"].str.startswith("'")).any()
    assert 0.0008 < (labels == "1").mean() < 0.003
    assert df.duplicated().sum() > 0
    frauds, legit = df[labels == "1"], df[labels == "0"]
    assert frauds["V14"].astype(float).mean() < legit["V14"].astype(float).mean() - 2


def test_drip_mode_resumes_numbering(tmp_path):
    cfg = SimConfig("fraud", 50, broken_share=0.0)
    first = simulate(cfg, tmp_path / "landing", tmp_path / "test", 2, show_progress=False)
    assert [p.name for p in first] == ["batch-00001.csv", "batch-00002.csv"]
    assert next_batch_index(tmp_path / "landing") == 3
    again = simulate(cfg, tmp_path / "landing", tmp_path / "test", 1, show_progress=False)
    assert again[0].name == "batch-00003.csv"
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == [f"test-0000{i}.csv" for i in (1, 2, 3)]
    assert not list((tmp_path / "landing").glob(".*"))  # no temp file left behind
    generated = round(50 / (1 - cfg.test_share))
    for i in (1, 2, 3):  # every generated row went to exactly one side: the landing batch or the test stream
        train = _frame((tmp_path / "landing" / f"batch-0000{i}.csv").read_text())
        test = _frame((tmp_path / "test" / f"test-0000{i}.csv").read_text())
        assert len(train) + len(test) == generated and list(train.columns) == list(test.columns)
        assert 0 < len(test) < len(train)
    assert (tmp_path / "landing" / "batch-00001.csv").read_bytes() != (tmp_path / "landing" / "batch-00003.csv"
                                                                       ).read_bytes()
