"""The web app in a real browser (Debian's headless Chromium through selenium) against the real `make run` stack
(tests/local_stack.py): an analyst uploads a CSV no other test uses, edits the inferred spec, trains two
algorithms, watches the training to its end, reads the leaderboard, downloads the model and predicts a row. Bad
files and choices are refused on the page and leave nothing behind. Every page is checked with axe-core at
1280 px and 390 px wide, and screenshotted into tests/artifacts/screenshots.

Both this file and test_up.py use the session's stack; conftest runs them last (this file first, by name), and
test_up.py stops the stack."""

from __future__ import annotations

import random
import socket
import time
import zipfile
from pathlib import Path

import pytest
from browser import axe_violations, first_render_ms, format_violations, screenshot, set_width, wait_download, wait_for
from local_stack import MAX_UPLOAD_MB, api_key
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

DATASET = "web_orders"
WIDTHS = (1280, 390)


def _orders_csv(rows: int = 240, seed: int = 7) -> str:
    """Online orders: was the order returned? Mostly when many items were bought on the web."""
    rng = random.Random(seed)
    out = ["order_id,basket_value,items,channel,coupon,signup_date,note,constant,empty_col,returned"]
    for i in range(rows):
        items = rng.randint(1, 9)
        channel = rng.choice(["web", "store", "phone"])
        p = 0.85 if items >= 5 and channel == "web" else 0.3 if items >= 7 else 0.08
        returned = "yes" if rng.random() < p else "no"
        out.append(f"o-{i:05d},\"{rng.uniform(5, 2500):,.2f}\",{items},{channel},{rng.choice(['yes', 'no'])},"
                   f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d},\"free text {rng.random():.6f} about "
                   f"the order, long enough to be dropped\",x,,{returned}")
    return "\n".join(out) + "\n"


def _check_page(driver, name: str) -> None:
    """axe at both widths (no serious or critical violation) and a screenshot at each."""
    for w in WIDTHS:
        set_width(driver, w)
        time.sleep(0.2)
        bad = axe_violations(driver)
        assert not bad, format_violations(bad, driver.current_url)
        screenshot(driver, f"{name}-{w}")
    set_width(driver, WIDTHS[0])


def _text(driver, css: str, contains: str, seconds: float = 30) -> str:
    WebDriverWait(driver, seconds).until(lambda d: contains in d.find_element(By.CSS_SELECTOR, css).text,
                                         f"{css} never said {contains!r}")
    return driver.find_element(By.CSS_SELECTOR, css).text


def _nothing_created(stack) -> None:
    specs = sorted(p.name for p in (stack.home / "specs").iterdir() if not p.name.startswith("."))
    assert specs == ["cars.yaml"], specs
    staging = stack.home / "data" / "staging"
    assert not staging.exists() or not any(staging.iterdir()), list(staging.iterdir())
    landing = stack.home / "data" / "landing"
    assert sorted(p.name for p in landing.iterdir()) in ([], ["cars"]) if landing.exists() else True


@pytest.fixture(scope="module")
def web(local_stack, browser):
    base = f"http://127.0.0.1:{local_stack.ports['api']}"
    browser.get(f"{base}/app/")
    wait_for(browser, "#key")
    assert "/app/login" in browser.current_url
    _check_page(browser, "01-login")
    browser.find_element(By.ID, "key").send_keys("not-a-key")
    browser.find_element(By.CSS_SELECTOR, "form.card button").click()
    _text(browser, "p.error", "not accepted")
    browser.find_element(By.ID, "key").send_keys(api_key(local_stack))
    browser.find_element(By.CSS_SELECTOR, "form.card button").click()
    wait_for(browser, "h1")
    assert browser.current_url.rstrip("/").endswith("/app")
    cookie = browser.get_cookie("mlp_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # plain http here
    return base


def _upload(driver, base: str, path: Path) -> None:
    driver.get(f"{base}/app/new")
    wait_for(driver, "#file").send_keys(str(path))
    driver.find_element(By.CSS_SELECTOR, "#upload-form button").click()


def test_bad_files_and_choices_are_refused_on_the_page_and_leave_nothing(local_stack, browser, web, tmp_path):
    cases = {
        "binary.csv": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary"),
        "notes.csv": (b"just some words\nand more words\n", "column"),
        "empty.csv": (b"", "is empty"),
        "header_only.csv": (b"a,b,c\n", "header only"),
        "dupes.csv": (b"a,b,a\n1,2,3\n4,5,6\n", "duplicate column names"),
        "big.csv": (b"a,b\n" + b"1,2\n" * (MAX_UPLOAD_MB * 1_048_576 // 4 + 10), "over the limit"),
    }
    for name, (content, said) in cases.items():
        f = tmp_path / name
        f.write_bytes(content)
        _upload(browser, web, f)
        _text(browser, "#upload-status", said)
        assert browser.find_element(By.ID, "upload-status").get_attribute("class") == "error"
        if name == "dupes.csv":
            screenshot(browser, "02-rejected-upload")
        assert browser.current_url.endswith("/app/new") and not browser.find_elements(By.ID, "spec-form")
    _nothing_created(local_stack)

    # an upload cut off halfway: the connection closes after a tenth of the promised body
    grant = _api(browser, web, "POST", "/app/api/uploads", {"filename": "cut.csv", "bytes": 100_000})
    with socket.create_connection(("127.0.0.1", local_stack.ports["api"])) as s:
        cookie = browser.get_cookie("mlp_session")["value"]
        csrf = browser.find_element(By.CSS_SELECTOR, 'meta[name="csrf-token"]').get_attribute("content")
        s.sendall((f"PUT {grant['url']} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
                   f"Content-Length: 100000\r\nCookie: mlp_session={cookie}\r\nX-CSRF-Token: {csrf}\r\n\r\n").encode()
                  + b"a,b\n" + b"1,2\n" * 2500)
    time.sleep(2)
    _nothing_created(local_stack)

    # a good file, then choices that cannot make a dataset
    good = tmp_path / "orders.csv"
    good.write_text(_orders_csv())
    _upload(browser, web, good)
    wait_for(browser, "#spec-form", seconds=30)
    target = Select(browser.find_element(By.ID, "target"))
    target.select_by_value("constant")
    _text(browser, "#task", "single value")
    target.select_by_value("empty_col")
    _text(browser, "#task", "no value")
    target.select_by_value("returned")
    _text(browser, "#task", "binary classification")
    for name, said in (("cars", "exists already"), ("my-orders!", "letters, digits and _")):
        box = browser.find_element(By.ID, "name")
        box.clear()
        box.send_keys(name)
        browser.find_element(By.ID, "create").click()
        _text(browser, "#create-status", said)
    screenshot(browser, "03-rejected-name")
    specs = sorted(p.name for p in (local_stack.home / "specs").iterdir() if not p.name.startswith("."))
    assert specs == ["cars.yaml"]
    browser.find_element(By.ID, "cancel").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.rstrip("/").endswith("/app/new"))
    _nothing_created(local_stack)


def _api(driver, base: str, method: str, path: str, body: dict | None = None) -> dict:
    """A call from the page's own context (its cookie and CSRF token), as the page's script makes it."""
    return driver.execute_async_script("""
        const [method, url, body, done] = arguments;
        const csrf = document.querySelector('meta[name="csrf-token"]').content;
        fetch(url, {method, headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
                    body: body ? JSON.stringify(body) : undefined})
          .then(r => r.json()).then(done, e => done({error: String(e)}));""", method, path, body)


def test_an_analyst_creates_trains_compares_downloads_and_predicts(local_stack, browser, web, tmp_path, spark):
    import mlflow.spark

    f = tmp_path / "orders.csv"
    f.write_text(_orders_csv())
    browser.get(f"{web}/app/new")
    wait_for(browser, "#file")
    _check_page(browser, "04-new")
    _upload(browser, web, f)
    wait_for(browser, "#spec-form", seconds=30)
    _check_page(browser, "05-spec-editor")
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-column="order_id"]')
    assert "key" in row.text
    assert "free text" not in Select(browser.find_element(
        By.CSS_SELECTOR, 'tr[data-column="note"] select')).first_selected_option.text
    # one column's type edited (items: a count read as categories), one feature left out (coupon)
    Select(browser.find_element(By.CSS_SELECTOR, 'tr[data-column="items"] select')).select_by_value("category")
    coupon = browser.find_element(By.CSS_SELECTOR, 'tr[data-column="coupon"] input[name="feature"]')
    assert coupon.is_selected()
    coupon.click()
    Select(browser.find_element(By.ID, "target")).select_by_value("returned")
    _text(browser, "#task", "binary classification")
    boxes = browser.find_elements(By.CSS_SELECTOR, 'fieldset[data-task="classification"] input[name="algorithm"]')
    for b in boxes:
        if b.is_selected() != (b.get_attribute("value") in ("logistic", "random_forest")):
            b.click()
    name = browser.find_element(By.ID, "name")
    name.clear()
    name.send_keys(DATASET)
    screenshot(browser, "06-spec-edited")
    browser.find_element(By.ID, "create").click()
    WebDriverWait(browser, 60).until(lambda d: d.current_url.endswith(f"/app/datasets/{DATASET}"))

    spec_text = (local_stack.home / "specs" / f"{DATASET}.yaml").read_text()
    assert "exclude:\n  - coupon" in spec_text and "name: items\n  parse: category" in spec_text
    assert "name: order_id\n  parse: string\n  required: true" in spec_text
    assert set(__import__("yaml").safe_load(spec_text)["algorithms"]) == {"logistic", "random_forest"}
    assert (local_stack.home / "data" / "landing" / DATASET / "orders.csv").exists() or \
        (local_stack.home / "data" / "bronze" / DATASET).exists()

    # progress, live, to the end (the daemon loads the new spec within a minute, then the chain runs)
    wait_for(browser, "#progress-state")
    seen, deadline, shot = set(), time.monotonic() + 1200, False
    while time.monotonic() < deadline:
        try:
            state = browser.find_element(By.ID, "progress-state").get_attribute("data-state")
        except Exception:  # the page reloads itself when the training ends
            state = None
        seen.add(state)
        try:  # the moment worth showing: models cross-validating, each with its own log line
            training = any("parameter maps" in d.text or "CV done" in d.text for d in browser.find_elements(
                By.CSS_SELECTOR, 'tr[data-asset^="model_"] .detail'))
        except Exception:
            training = False
        if training and not shot:
            screenshot(browser, "07-training")
            shot = True
        if browser.find_elements(By.ID, "leaderboard"):
            break
        if state == "failed":
            pytest.fail("training failed: " + browser.find_element(By.ID, "progress").text[-3000:])
        time.sleep(2)
    else:
        pytest.fail(f"no leaderboard within 20 min; states seen {seen}: "
                    + browser.find_element(By.ID, "progress").text[-3000:])
    assert "training" in seen or "queued" in seen, seen
    assert shot, "no model was seen cross-validating in the progress table"
    board = browser.find_element(By.ID, "leaderboard").text
    for model in ("stack", "logistic", "random_forest"):
        assert model in board, board
    assert "pr_auc" in board
    _text(browser, "#progress-state", "done", seconds=120)
    plots = [i.get_attribute("src").rsplit("/", 1)[-1] for i in browser.find_elements(By.CSS_SELECTOR, ".plots img")]
    assert {"roc.png", "pr.png", "confusion.png"} <= set(plots), plots
    for img in browser.find_elements(By.CSS_SELECTOR, ".plots img"):  # lazy: each loads once scrolled to
        browser.execute_script("arguments[0].scrollIntoView()", img)
        WebDriverWait(browser, 30).until(lambda _, i=img: i.get_property("complete") and i.get_property(
            "naturalWidth") > 0, f"plot {img.get_attribute('src')} did not load")
    assert browser.find_elements(By.CSS_SELECTOR, "table.importance tbody tr"), "no feature importance"
    assert "promoted" in browser.find_element(By.ID, "decision").text
    _check_page(browser, "08-results")

    # the model zip, loaded as MLflow loads it
    since = time.time()
    link = browser.find_element(By.CSS_SELECTOR, "#versions a[download]")
    link.click()
    archive = wait_download(browser.download_dir, ".zip", 120, since=since)
    folder = tmp_path / "model"
    zipfile.ZipFile(archive).extractall(folder)
    model = mlflow.spark.load_model(str(folder))
    assert len(model.stages) > 3

    # one row through the REST API, from the form built from the spec's columns
    values = {"order_id": "o-new-1", "basket_value": "1,234.50", "items": "7", "channel": "web", "coupon": "no",
              "signup_date": "2024-05-01"}
    for col, v in values.items():
        browser.find_element(By.ID, f"in-{col}").send_keys(v)
    deadline = time.monotonic() + 120
    while True:  # the API's watcher loads the new champion within its poll interval
        browser.find_element(By.CSS_SELECTOR, "#try-form button").click()
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "try-result").text not in ("", "Scoring…"))
        out = browser.find_element(By.ID, "try-result").text
        if "Prediction" in out or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert "model version 1" in out and out.split("Prediction: ")[1].split(" ")[0] in ("yes", "no"), out
    screenshot(browser, "09-try-it")
    browser.find_element(By.ID, "in-order_id").clear()  # the key is required: a row without it is refused
    browser.find_element(By.CSS_SELECTOR, "#try-form button").click()
    out = _text(browser, "#try-result", "Rejected")
    assert "order_id: missing" in out, out

    # a CSV of rows scored and downloaded
    rows = tmp_path / "to_score.csv"
    rows.write_text("order_id,basket_value,items,channel,coupon,signup_date\n"
                    "s-1,10.00,1,store,no,2024-01-02\ns-2,99.50,8,web,yes,2024-02-03\n,5,2,phone,no,2024-03-04\n")
    browser.find_element(By.ID, "score-file").send_keys(str(rows))
    since = time.time()
    browser.find_element(By.CSS_SELECTOR, "#score-form button").click()
    _text(browser, "#score-status", "Scored 3 rows", seconds=60)
    browser.find_element(By.CSS_SELECTOR, "#score-status a").click()
    scored = wait_download(browser.download_dir, "-predictions.csv", 30, since=since).read_text().splitlines()
    assert scored[0].startswith("request_id,prediction") and len(scored) == 4, scored
    assert scored[3].endswith("order_id: missing or invalid value ''") or "rejected" in scored[3], scored

    # the overview lists it with its champion
    browser.get(f"{web}/app/")
    row = wait_for(browser, f'tr[data-dataset="{DATASET}"]')
    assert "v1" in row.text and "done" in row.text, row.text
    timing = first_render_ms(browser)
    assert timing["domContentLoadedEventEnd"] < 5000, timing
    _check_page(browser, "10-datasets")


def _registry_with(mlflow_uri: str, datasets: list[str], versions_each: int) -> None:
    """Each dataset's trainings as the platform logs them (a parent run with the stack's holdout metrics and two
    model runs under it) and one registered version per training, the newest the champion."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client, now = MlflowClient(mlflow_uri, registry_uri=mlflow_uri), int(time.time() * 1000)

    def one(ds: str) -> None:
        exp = client.create_experiment(f"ml_platform/{ds}")
        client.create_registered_model(ds)
        for v in range(versions_each):
            parent = client.create_run(exp, tags={"role": "parent", "training_version": f"v{v}", "dataset": ds})
            pid = parent.info.run_id
            client.log_batch(pid, metrics=[Metric("stack_holdout_rmse", 9000.0 - v, now, 0),
                                           Metric("stack_holdout_r2", 0.8, now, 0)])
            for algo in ("linear", "gbt"):
                child = client.create_run(exp, tags={"mlflow.parentRunId": pid, "algorithm": algo})
                client.log_batch(child.info.run_id, metrics=[Metric("holdout_rmse", 9100.0 - v, now, 0),
                                                             Metric("cv_rmse_mean", 9200.0, now, 0),
                                                             Metric("train_seconds", 12.0, now, 0)])
                client.set_terminated(child.info.run_id, "FINISHED")
            client.set_terminated(pid, "FINISHED")
            mv = client.create_model_version(ds, f"runs:/{pid}/model", run_id=pid,
                                             tags={"decision": f"promoted: rmse {9000 - v} vs champion {9001 - v}",
                                                   "training_version": f"v{v}"})
        client.set_registered_model_alias(ds, "champion", mv.version)

    with ThreadPoolExecutor(4) as pool:  # the server waits on each new version: overlap those waits
        list(pool.map(one, datasets))


def test_every_page_renders_in_under_a_second_with_20_datasets_and_100_model_versions(local_stack, browser, tmp_path):
    """A second API process's worth of web app (in this process, without Spark: nothing is scored) over 20 specs and
    100 registered versions in the stack's MLflow, on `localhost` (its own cookie). The figures go to
    tests/artifacts/web_render.json."""
    import json
    import threading

    import uvicorn
    import yaml
    from conftest import ROOT, free_port

    from api.app import create_app
    from api.platform import Platform
    from api.settings import ApiSettings, key_hash
    from ml_platform.serve.watcher import ChampionWatcher

    names = [f"perf_{i:02d}" for i in range(20)]
    specs = tmp_path / "specs"
    specs.mkdir()
    base = yaml.safe_load((ROOT / "ml_platform/specs/used_cars.yaml").read_text())
    for n in names:
        (specs / f"{n}.yaml").write_text(yaml.safe_dump(base | {"name": n}, sort_keys=False))
    mlflow_uri = f"http://127.0.0.1:{local_stack.ports['mlflow']}"
    _registry_with(mlflow_uri, names, 5)
    settings = ApiSettings(data_root=str(tmp_path / "data"), home=tmp_path, key_hashes=frozenset({key_hash("perf")}),
                           specs_dir=str(specs), tracking_uri=mlflow_uri, publish=False,
                           dagster_url=f"http://127.0.0.1:{local_stack.ports['dagster']}",
                           bootstrap=f"127.0.0.1:{local_stack.ports['kafka']}")
    platform = Platform(settings, watcher_for=lambda spec: ChampionWatcher(lambda: None, lambda v: None, 600))
    port = free_port()
    app = create_app(settings, platform)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        # the API warms its caches of what never changes at start (api/web/__init__.py): measure after that
        WebDriverWait(browser, 120).until(lambda _: server.started and app.state.warmed.is_set())
        web = f"http://localhost:{port}"
        browser.get(f"{web}/app/login")
        wait_for(browser, "#key").send_keys("perf")
        browser.find_element(By.CSS_SELECTOR, "form.card button").click()
        wait_for(browser, 'tr[data-dataset="perf_19"]')
        figures = {}
        browser.get(f"{web}/app/login")
        wait_for(browser, "#key")
        figures["/app/login"] = round(first_render_ms(browser)["loadEventEnd"])
        for visit in ("first", "again"):  # the first visit reads every champion's metrics; later ones, aliases only
            for page in ("/app/", "/app/datasets/perf_07", "/app/new"):
                browser.get(f"{web}{page}")
                wait_for(browser, "h1")
                t = first_render_ms(browser)
                figures[f"{page} ({visit})"] = round(t["loadEventEnd"])
        browser.get(f"{web}/app/")
        rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-dataset]")
        assert len(rows) == 20 and all("v5" in r.text for r in rows), [r.text for r in rows[:3]]
        browser.get(f"{web}/app/datasets/perf_07")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")) == 5
        assert "promoted: rmse 8996" in browser.find_element(By.ID, "decision").text
        _check_page(browser, "11-perf-dataset")
        out = ROOT / "tests" / "artifacts" / "web_render.json"
        out.write_text(json.dumps(figures, indent=1))
        print("page load (ms):", figures)
        slow = {k: v for k, v in figures.items() if v >= 1000}
        assert not slow, f"pages over the limit: {slow} (all: {figures})"
    finally:
        server.should_exit = True
        thread.join(10)
