"""Helpers for the browser tests: Debian's headless Chromium driven by selenium, axe-core accessibility checks,
screenshots, Navigation Timing figures and downloads. `make browser` installs Chromium, chromedriver and axe-core.

Playwright is not used: its browsers come from a CDN that is not reachable here; Debian's chromium and
chromium-driver packages are, and they always come at the same version."""

from __future__ import annotations

import functools
import os
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
AXE_JS = ROOT / "node" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"
MAX_NODES = 5  # selectors kept per violation: enough to find the element, short enough to read in a failure


def start_chromium(width: int = 1280, height: int = 900, download_dir: str | Path | None = None,
                   page_load_seconds: float = 30) -> webdriver.Chrome:
    """A headless Chromium whose viewport is width x height; downloads land in `download_dir` (a new temporary
    folder when None), which the driver carries as `driver.download_dir`."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.is_file():
            raise RuntimeError(f"{path} is missing: run `make browser` (the Debian package {package})")
    # the driver's path is given, so selenium-manager is skipped; offline mode keeps it from downloading anything
    # should a later selenium consult it anyway
    os.environ.setdefault("SE_OFFLINE", "true")
    downloads = Path(download_dir) if download_dir is not None else Path(tempfile.mkdtemp(prefix="downloads-"))
    downloads.mkdir(parents=True, exist_ok=True)

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox",  # we run as root, where Chromium's sandbox cannot start
                 "--disable-dev-shm-usage",  # a container's small /dev/shm crashes the renderer
                 "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                 "--lang=en-US", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "download.directory_upgrade": True,
    })
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        # headless Chromium ignores the download prefs unless downloads are allowed over CDP
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.set_page_load_timeout(page_load_seconds)
        driver.set_script_timeout(60)  # axe.run on a large page
        set_width(driver, width, height)
    except Exception:
        driver.quit()
        raise
    driver.download_dir = downloads
    return driver


def set_width(driver: webdriver.Chrome, width: int, height: int | None = None) -> int:
    """Resizes the window so the viewport (what CSS media queries see) is `width` wide, and `height` high when
    given; returns the viewport's width."""
    size = driver.get_window_size()
    inner_w, inner_h = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    target_h = height if height is not None else inner_h
    # the window may be larger than its viewport (a frame, a scrollbar): keep the difference
    driver.set_window_size(width + size["width"] - inner_w, target_h + size["height"] - inner_h)
    return driver.execute_script("return window.innerWidth")


def wait_for(driver: webdriver.Chrome, css: str, seconds: float = 10, visible: bool = True) -> WebElement:
    """The first element matching `css` once it is there (and displayed, when `visible`)."""
    locate = expected_conditions.visibility_of_element_located if visible else \
        expected_conditions.presence_of_element_located
    return WebDriverWait(driver, seconds).until(
        locate((By.CSS_SELECTOR, css)),
        message=f"no {'visible ' if visible else ''}element matches {css!r} after {seconds} s on {driver.current_url}")


@functools.cache
def _axe_source() -> str:
    if not AXE_JS.is_file():
        raise RuntimeError(f"{AXE_JS} is missing: run `make axe` (npm ci in node/axe)")
    return AXE_JS.read_text(encoding="utf-8")


_RUN_AXE = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ['violations']}).then(
  r => done({violations: r.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help, count: v.nodes.length,
    nodes: v.nodes.slice(0, arguments[0]).map(n => n.target.flat(Infinity).join(' '))}))}),
  e => done({error: String(e && e.stack || e)}));
"""


def axe_violations(driver: webdriver.Chrome, impacts=("serious", "critical")) -> list[dict]:
    """axe-core's violations on the current page whose impact is one of `impacts`, each {id, impact, help, nodes}
    (nodes: the CSS selectors of at most MAX_NODES offending elements; `count` says how many there are)."""
    if not driver.execute_script("return typeof window.axe === 'object'"):
        driver.execute_script(_axe_source())
    result = driver.execute_async_script(_RUN_AXE, MAX_NODES)
    if "error" in result:
        raise RuntimeError(f"axe.run failed on {driver.current_url}: {result['error']}")
    return [v for v in result["violations"] if v["impact"] in impacts]


def format_violations(violations: list[dict], url: str = "") -> str:
    """A readable assertion message: one line per rule, then its elements."""
    if not violations:
        return "no accessibility violations"
    lines = [f"{len(violations)} accessibility violation(s){' on ' + url if url else ''}:"]
    for v in violations:
        lines.append(f"  {v['id']} ({v['impact']}): {v['help']} [{v.get('count', len(v['nodes']))} element(s)]")
        lines.extend(f"      {node}" for node in v["nodes"])
    return "\n".join(lines)


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    """The viewport as tests/artifacts/screenshots/<name>.png (ignored by git); returns the path."""
    path = SCREENSHOTS / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"Chromium could not write the screenshot {path}")
    return path


_NAVIGATION = """
const n = performance.getEntriesByType('navigation')[0];
return n ? {responseStart: n.responseStart - n.startTime,
            domContentLoadedEventEnd: n.domContentLoadedEventEnd - n.startTime,
            loadEventEnd: n.loadEventEnd > 0 ? n.loadEventEnd - n.startTime : null} : null;
"""


def first_render_ms(driver: webdriver.Chrome, seconds: float = 10) -> dict[str, float]:
    """The current page's Navigation Timing in milliseconds from the navigation's start: responseStart (first
    byte), domContentLoadedEventEnd and loadEventEnd (waited for, as it is set only after the load handlers)."""
    timing = WebDriverWait(driver, seconds).until(
        lambda d: (t := d.execute_script(_NAVIGATION)) and t["loadEventEnd"] is not None and t,
        message=f"no finished navigation entry on {driver.current_url} after {seconds} s")
    return {k: float(v) for k, v in timing.items()}


def wait_download(directory: str | Path, suffix: str, seconds: float = 30, since: float | None = None) -> Path:
    """The newest finished download in `directory` whose name ends with `suffix` (modified at or after the epoch
    time `since`, when given: pass time.time() from before the click when the folder holds earlier downloads)."""
    directory = Path(directory)
    deadline = time.monotonic() + seconds
    while True:
        files = [p for p in directory.iterdir() if p.is_file()]
        partial = [p for p in files if p.name.endswith(".crdownload")]
        done = [p for p in files if p.name.endswith(suffix) and not p.name.endswith(".crdownload")
                and (since is None or p.stat().st_mtime >= since - 0.05)]  # mtimes come from a coarser clock
        if done and not partial:
            return max(done, key=lambda p: p.stat().st_mtime)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no finished *{suffix} download in {directory} after {seconds} s; "
                               f"it holds {sorted(p.name for p in files)}")
        time.sleep(0.1)
