"""The browser harness works on this machine: headless Chromium starts, axe-core finds a deliberate violation and
passes a fixed page, and screenshots, Navigation Timing, resizing and downloads all do what tests/browser.py says."""

import functools
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from browser import axe_violations, first_render_ms, format_violations, screenshot, set_width, wait_download, wait_for
from conftest import free_port

PIXEL = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
HEAD = '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{}</title></head><body><main>'
# an image link with no text (image-alt: critical, link-name: serious) and an input with no label (label: critical)
BROKEN = HEAD.format("Broken") + f"""<h1>Broken</h1><a href="fixed.html"><img src="{PIXEL}"></a>
<form><input type="text" name="q"></form></main></body></html>"""
FIXED = HEAD.format("Fixed") + f"""<h1>Fixed</h1><a href="broken.html"><img src="{PIXEL}" alt="Back"></a>
<form><label for="q">Search</label> <input id="q" type="text" name="q"></form>
<p><a id="csv" href="scores.csv" download>Download the scores</a></p></main></body></html>"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def site(tmp_path):
    (tmp_path / "broken.html").write_text(BROKEN, encoding="utf-8")
    (tmp_path / "fixed.html").write_text(FIXED, encoding="utf-8")
    (tmp_path / "scores.csv").write_text("id,score\n1,0.5\n2,0.25\n", encoding="utf-8")
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), functools.partial(_Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_harness(browser, site):
    browser.get(f"{site}/broken.html")
    found = {v["id"]: v for v in axe_violations(browser)}
    assert {"image-alt", "link-name", "label"} <= found.keys(), format_violations(list(found.values()))
    assert found["label"]["nodes"] == ["input"] and found["label"]["impact"] == "critical"
    assert "label" in format_violations(list(found.values()), browser.current_url)

    browser.get(f"{site}/fixed.html")
    violations = axe_violations(browser)
    assert violations == [], format_violations(violations, browser.current_url)

    timing = first_render_ms(browser)
    assert set(timing) == {"responseStart", "domContentLoadedEventEnd", "loadEventEnd"}
    assert 0 <= timing["responseStart"] <= timing["domContentLoadedEventEnd"] <= timing["loadEventEnd"] < 10_000

    png = screenshot(browser, "browser_harness_fixed")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000

    try:
        assert set_width(browser, 400) == 400
        assert browser.execute_script("return window.matchMedia('(max-width: 480px)').matches")
    finally:
        assert set_width(browser, 1280) == 1280

    since = time.time()
    wait_for(browser, "#csv").click()
    path = wait_download(browser.download_dir, ".csv", seconds=15, since=since)
    assert path.name == "scores.csv" and path.read_text(encoding="utf-8").startswith("id,score\n")
