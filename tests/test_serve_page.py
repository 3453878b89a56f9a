"""The search page at /, in a real headless Chromium (Debian's, driven by Playwright), desktop and phone width."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from servekit import build_lexical, running_server

CHROMIUM = os.environ.get("MITSUKE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
# Screenshots are kept here (and under pytest's tmp dir) for a person to look at.
ARTIFACTS = Path(os.environ.get("MITSUKE_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
QUERY = "豊岡市の年間平均降雪量は？"


def _need(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI must run the browser test: apt-get install -y chromium; pip install playwright)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "playwright is not installed (pip install playwright)")
    _need(Path(CHROMIUM).is_file(), f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    index = build_lexical(tmp_path_factory.mktemp("page") / "lex")
    with running_server(index, log=tmp_path_factory.mktemp("logs") / "page.log") as (base, _):
        yield base


def _shot(page, tmp_path: Path, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = tmp_path / name
    page.screenshot(path=str(out), full_page=False)
    shutil.copy(out, ARTIFACTS / name)
    return out


@pytest.mark.parametrize("width,height,name", [(1100, 900, "desktop"), (375, 740, "phone")])
def test_page_shows_highlighted_results_and_the_passage_in_its_document(browser, server, tmp_path, width, height,
                                                                        name):
    context = browser.new_context(viewport={"width": width, "height": height}, locale="ja-JP")
    page = context.new_page()
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server) else outside.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('indexinfo').textContent.includes('16')")
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    page.wait_for_selector("#results .result")
    results = page.locator("#results .result")
    assert results.count() == 10
    first = results.nth(0)
    assert first.locator(".title").inner_text() == "豊岡市"
    assert first.locator(".headings").inner_text() == "豊岡市 › 気候 › 冬"
    assert first.locator(".cite").inner_text() == "[豊岡市.md 271:477]"
    marks = first.locator("mark").all_inner_texts()
    assert "豊岡市" in marks and any("降雪" in m for m in marks), marks
    assert "312cm" in first.locator(".text").inner_text()
    # Nothing is wider than the screen (usable at phone width).
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    _shot(page, tmp_path, f"serve-page-{name}.png")

    first.locator(".title").click()
    page.wait_for_selector("#doc.show mark.passage")
    passage = page.locator("#doctext mark.passage").inner_text()
    assert passage.startswith("### 冬") and "312cm" in passage
    assert page.locator("#doctitle").inner_text() == "豊岡市"
    assert page.locator("mark.passage").is_visible()  # scrolled into view
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    _shot(page, tmp_path, f"serve-page-{name}-document.png")
    page.click("#back")
    assert page.locator("#results .result").first.is_visible()

    # Markup in a query is text, never HTML; an over-long query shows the server's message.
    page.fill("#q", "<img src=x onerror=alert(1)>" + "あ" * 2100)
    page.press("#q", "Enter")
    page.wait_for_selector("#status.error")
    assert "2000" in page.locator("#status").inner_text()
    assert errors == [] and outside == []
    context.close()
