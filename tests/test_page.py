"""The writing page (GET /write) in a real browser: Debian's Chromium, headless, driven by selenium through
chromium-driver, against bin/serve on 127.0.0.1 (conftest's session server) or a server with an API key.

A writer types, presses Tab, watches the suggestion stream in, moves through suggestions with Down / Up,
takes one with Tab or Enter or leaves it with Left / Escape / any other key; the text survives a reload and
downloads; everything comes from the server itself; the page works by keyboard alone and on a phone."""

import http.server
import json
import shutil
import threading
import time

import httpx
import pytest
from conftest import serving_in_thread
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 60  # seconds a step may take before the test fails (a loaded CI machine; a step takes ~0.1 s)


def chromium_path(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: scripts/setup_tests.sh installs it (apt-get install chromium chromium-driver)"
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900",
                     "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(chromium_path("chromedriver")))
    downloads = tmp_path_factory.mktemp("downloads")
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


class Page:
    """The writing page in the browser, as a writer uses it."""

    def __init__(self, driver, base: str, open_api: bool = True):
        self.driver, self.base = driver, base
        driver.set_window_size(1200, 900)
        driver.get(base + "/write")
        driver.execute_script("localStorage.clear()")
        driver.get(base + "/write")
        self.wait(lambda: self.js("return document.activeElement.id") == "editor")
        if open_api:  # the page has asked the API for the model's name
            self.wait(lambda: self.driver.find_element(By.ID, "model").text.startswith("with "))

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, condition, message=""):
        return WebDriverWait(self.driver, WAIT, poll_frequency=0.05).until(lambda _: condition(),
                                                                           message or "timed out")

    def set_field(self, field: str, value) -> None:
        if not self.js("return document.getElementById('settings').open"):
            self.driver.find_element(By.CSS_SELECTOR, "#settings summary").click()
        element = self.driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(str(value))
        self.js("arguments[0].dispatchEvent(new Event('change'))", element)
        self.driver.find_element(By.ID, "editor").click()

    def keys(self, *keys) -> None:
        ActionChains(self.driver).send_keys(*keys).perform()

    def back_tab(self) -> None:
        ActionChains(self.driver).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()

    def text(self) -> str:
        """The writer's text: the editor's, the suggestion left out."""
        return self.js("return textOf(document.getElementById('editor'))")

    def ghost(self):
        return self.js("const g = document.querySelector('#editor .ghost'); return g && g.textContent")

    def status(self) -> str:
        return self.driver.find_element(By.ID, "status").text

    def suggestion_done(self, length: int) -> str:
        """Waits until the suggestion shown is whole (`length` characters, or cut at a stop) and returns it."""
        self.wait(lambda: self.ghost() is not None and "(coming)" not in self.status()
                  and self.status().startswith("Suggestion"), f"no whole suggestion; status: {self.status()!r}")
        ghost = self.ghost()
        assert 0 < len(ghost) <= length
        return ghost


@pytest.fixture
def page(browser, server):
    page = Page(browser, server["base"])
    page.set_field("length", 40)
    page.set_field("count", 2)
    return page


def test_tab_streams_a_suggestion_down_and_up_cycle_and_tab_takes_it(page):
    page.keys("the cat sat on")
    assert page.text() == "the cat sat on"
    page.js("""window.shown = [];  // every text the suggestion showed, as it streamed in
               new MutationObserver((records) => { for (const r of records) for (const n of r.addedNodes)
                 if (n.nodeType === Node.TEXT_NODE && n.parentNode && n.parentNode.classList.contains('ghost'))
                   window.shown.push(n.data); }).observe(document.getElementById('editor'),
                                                           {childList: true, subtree: true});""")
    page.keys(Keys.TAB)
    first = page.suggestion_done(40)
    shown = page.js("return window.shown")
    assert len(set(shown)) > 1 and all(first.startswith(s) for s in shown)  # it grew in pieces: streamed
    assert page.text() == "the cat sat on"  # shown apart from the text, not in it
    style = page.js("const s = getComputedStyle(document.querySelector('.ghost')); return [s.color, s.fontStyle]")
    editor_color = page.js("return getComputedStyle(document.getElementById('editor')).color")
    assert style[0] != editor_color  # visibly apart
    page.keys(Keys.ARROW_DOWN)
    assert page.status().startswith("Suggestion 2 of")
    second = page.suggestion_done(40)
    page.wait(lambda: page.js("return document.querySelector('#status').textContent").endswith("of 4")
              or "(coming)" in page.status())  # the last was shown: more were fetched
    page.keys(Keys.ARROW_UP)
    assert page.status().startswith("Suggestion 1 of") and page.ghost() == first
    page.keys(Keys.ARROW_DOWN)
    assert page.ghost() == second
    page.keys(Keys.TAB)
    assert page.ghost() is None and page.text() == "the cat sat on" + second
    page.keys(" and")  # the cursor is after the taken text
    assert page.text() == "the cat sat on" + second + " and"


def test_enter_takes_left_and_escape_dismiss_another_key_goes_on_editing(page):
    page.keys("she said")
    page.keys(Keys.TAB)
    taken = page.suggestion_done(40)
    page.keys(Keys.ENTER)
    assert page.text() == "she said" + taken and page.status() == "Taken."
    for key in (Keys.ARROW_LEFT, Keys.ESCAPE):
        before = page.text()
        page.keys(Keys.TAB)
        page.suggestion_done(40)
        page.keys(key)
        assert page.ghost() is None and page.text() == before and page.status() == "Dismissed."
    before = page.text()
    page.keys(Keys.TAB)
    page.wait(lambda: page.ghost() is not None)
    page.keys("x")  # any other key: the suggestion goes, the key types
    assert page.ghost() is None and page.text() == before + "x"
    page.keys(Keys.TAB)  # a suggestion in the middle of the text is primed by the text before the cursor
    page.suggestion_done(40)
    page.keys(Keys.ESCAPE)
    page.js("""const e = document.getElementById('editor'), r = document.createRange();
               r.setStart(e.firstChild, 3); r.collapse(true);
               getSelection().removeAllRanges(); getSelection().addRange(r);""")
    page.keys(Keys.TAB)
    middle = page.suggestion_done(40)
    page.keys(Keys.TAB)
    assert page.text() == "she" + middle + before[3:] + "x"


def test_the_text_survives_a_reload_and_downloads(page, browser):
    page.keys("the dog ran home.")
    page.keys(Keys.TAB)
    page.suggestion_done(40)
    page.keys(Keys.TAB)
    text = page.text()
    page.wait(lambda: page.js("return localStorage.getItem('kerascharrnn.write.text')") == text)
    browser.refresh()
    page.wait(lambda: page.text() == text)
    assert page.js("return document.getElementById('length').value") == "40"  # the settings stay too
    target = browser.downloads / "writing.txt"
    if target.exists():
        target.unlink()
    browser.find_element(By.ID, "download").click()
    page.wait(lambda: target.exists() and target.read_text(encoding="utf-8") == text, "no download")


def test_every_asset_comes_from_the_server_and_the_policy_says_so(page, server):
    reply = httpx.get(server["base"] + "/write", timeout=30)
    policy = reply.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    page.keys("a")
    page.keys(Keys.TAB)
    page.suggestion_done(40)
    urls = page.js("return [location.href, ...performance.getEntriesByType('resource').map((e) => e.name)]")
    assert len(urls) >= 4 and all(url.startswith(server["base"] + "/") for url in urls), urls
    for path in ("/write/write.js", "/write/write.css"):
        assert httpx.get(server["base"] + path, timeout=30).status_code == 200
    assert httpx.get(server["base"] + "/write/secret.txt", timeout=30).status_code == 404
    problems = [entry for entry in page.driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert not problems, problems  # no refused resource, no script error, no missing icon


def test_keyboard_only_reaches_everything_and_escape_then_tab_leaves_the_editor(page):
    page.keys("we go")
    page.keys(Keys.ESCAPE, Keys.TAB)  # nothing offered: Escape, then Tab moves on as it does elsewhere
    assert page.js("return document.activeElement.id") == "touch" or page.js(
        "return document.activeElement.closest('#touch') !== null")
    page.back_tab()
    assert page.js("return document.activeElement.id") == "editor"
    page.keys(Keys.TAB)  # and back in the editor, Tab suggests again
    page.suggestion_done(40)
    page.keys(Keys.ESCAPE)
    page.js("document.getElementById('settings').open = false; document.getElementById('download').focus()")
    page.back_tab()  # the settings open from the keyboard
    assert page.js("return document.activeElement.tagName") == "SUMMARY"
    page.keys(Keys.ENTER)
    assert page.js("return document.getElementById('settings').open")
    page.keys(Keys.TAB)  # into its first field, temperature
    assert page.js("return document.activeElement.id") == "temperature"


def test_a_phone_sized_screen_fits_and_the_buttons_do_what_the_keys_do(page):
    page.driver.set_window_size(390, 844)
    page.wait(lambda: page.js("return window.innerWidth") <= 400)
    assert page.js("return document.documentElement.scrollWidth <= window.innerWidth")
    page.keys("the big red")
    buttons = {b.get_attribute("data-action"): b for b in page.driver.find_elements(By.CSS_SELECTOR, "#touch button")}
    assert all(b.is_displayed() and b.size["height"] >= 32 for b in buttons.values())
    buttons["suggest"].click()
    first = page.suggestion_done(40)
    buttons["next"].click()
    second = page.suggestion_done(40)
    buttons["previous"].click()
    assert page.ghost() == first
    buttons["next"].click()
    assert page.ghost() == second
    buttons["accept"].click()
    assert page.text() == "the big red" + second
    editor = page.driver.find_element(By.ID, "editor")
    assert editor.size["width"] <= 390 and editor.size["height"] >= 200


def test_a_server_with_an_api_key_takes_it_from_the_settings(browser, sentence_model):
    with serving_in_thread(sentence_model, api_key="s3cret") as (base, _):
        page = Page(browser, base, open_api=False)
        page.wait(lambda: "API key" in page.status())  # the page loads; the API says it needs the key
        page.set_field("key", "wrong")
        page.keys("the")
        page.keys(Keys.TAB)
        page.wait(lambda: "API key" in page.status() and page.ghost() is None)
        page.set_field("key", "s3cret")
        page.set_field("length", 10)
        page.keys(Keys.END, Keys.TAB)
        taken = page.suggestion_done(10)
        page.keys(Keys.TAB)
        assert page.text() == "the" + taken
        stored = json.loads(page.js("return localStorage.getItem('kerascharrnn.write.settings')"))
        assert stored["length"] == "10"


class _FaultyServer(http.server.BaseHTTPRequestHandler):
    """Serves the page's own files and a model's name, and answers its completions badly (`fault`): never, a
    stream that stalls after its first piece, or a stream that ends before its suggestions do."""

    fault = "silent"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        from importlib import resources

        if self.path == "/v1/models":
            return self._send(json.dumps({"data": [{"id": "faulty"}]}).encode(), "application/json")
        name = {"/write": "write.html", "/write/write.js": "write.js", "/write/write.css": "write.css"}[self.path]
        kind = {"html": "text/html", "js": "text/javascript", "css": "text/css"}[name.rsplit(".", 1)[1]]
        self._send(resources.files("kerascharrnn.serving").joinpath("static", name).read_bytes(), kind)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.fault == "silent":
            time.sleep(60)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = {"choices": [{"index": 0, "text": "the start", "finish_reason": None}]}
        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.flush()
        if self.fault == "stall":
            time.sleep(60)
        self.close_connection = True


@pytest.mark.parametrize("fault,message", [
    ("silent", "No suggestion: the server sent nothing for 1.5 s"),
    ("stall", "No suggestion: the server sent nothing for 1.5 s"),
    ("short", "The server ended the reply early"),
])
def test_a_server_that_never_answers_or_stops_midway_gets_a_message_not_coming_for_ever(browser, fault, message):
    handler = type("Faulty", (_FaultyServer,), {"fault": fault})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        browser.get(base + "/write")
        browser.execute_script("localStorage.clear(); localStorage.setItem('kerascharrnn.write.quiet_ms', '1500')")
        page = Page(browser, base)
        browser.execute_script("localStorage.setItem('kerascharrnn.write.quiet_ms', '1500')")
        browser.get(base + "/write")
        page.wait(lambda: page.driver.find_element(By.ID, "model").text.startswith("with "))
        page.keys("the cat")
        page.keys(Keys.TAB)
        page.wait(lambda: message in page.status(), f"status: {page.status()!r}")
        assert "(coming)" not in page.status()
    finally:
        httpd.shutdown()
