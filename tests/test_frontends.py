"""The writing frontends of ../shared/frontends (KoboldAI Lite, Mikupad), opened as writers open them, in headless
Chromium against bin/serve (a real uvicorn on 127.0.0.1) and driven through their own UI: pick the API, point it
at the server, type, generate, until generated text shows.

Each mode is opened from another loopback port (a static file server: a cross-origin page the default
--cors_origins allows) and from a file (Origin: null, which a server with an API key allows; the key is typed
into the frontend's key field). Every request leaving the browser for another host fails at once (its host
resolves nowhere), as on a machine with no network. A page from an origin the server does not allow gets no
answer it can read."""

import contextlib
import functools
import http.server
import json
import os
import threading
import time

import pytest
from conftest import free_port, serving_in_thread, shared_file
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait
from test_page import chromium_path

WAIT = 60  # seconds a step may take (a loaded CI machine)
KEY = "writer's-key"
MODEL = "s"  # serving_in_thread's model name
PROMPT = "the cat sat on"
FOE = "foe.example"  # resolves to 127.0.0.1 in the browser, but is not a loopback name: a website


@pytest.fixture(scope="module")
def frontends_dir():
    return os.path.dirname(os.path.dirname(shared_file("frontends/mikupad/mikupad.html")))


@contextlib.contextmanager
def static_files(directory: str):
    """A static file server for `directory` on another loopback port: a page there is cross-origin to bin/serve."""
    handler = functools.partial(_QuietHandler, directory=directory)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def open_server(sentence_model):
    """bin/serve as a writer starts it: no key, the default pages."""
    with serving_in_thread(sentence_model) as (base, records):
        yield base, records


@pytest.fixture(scope="module")
def keyed_server(sentence_model):
    """bin/serve with an API key: pages opened from a file may use it, with the key."""
    with serving_in_thread(sentence_model, api_key=KEY) as (base, records):
        yield base, records


@pytest.fixture(scope="module")
def page_host(frontends_dir):
    with static_files(frontends_dir) as base:
        yield base


@pytest.fixture
def browser(tmp_path):
    """A fresh Chromium profile per test (the frontends keep their settings in the browser)."""
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--disable-extensions", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
                     f"--host-resolver-rules=MAP {FOE} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.set_capability("unhandledPromptBehavior", "accept")  # Mikupad's alert about persistent storage
    driver = webdriver.Chrome(options=options, service=Service(chromium_path("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, message="", timeout=WAIT):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(), message or "timed out")


def page_url(frontend: str, origin: str, page_host: str, frontends_dir: str) -> str:
    relative = {"lite": "koboldai-lite/index.html", "mikupad": "mikupad/mikupad.html"}[frontend]
    if origin == "file":
        return "file://" + os.path.join(frontends_dir, relative)
    return f"{page_host}/{relative}"


def typed(element, text: str) -> None:
    """Replaces an input's text by keystrokes, as a writer does (React's inputs ignore a value set by script)."""
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.BACKSPACE)
    element.send_keys(text)


def browser_errors(driver) -> str:
    return "\n".join(e["message"][:300] for e in driver.get_log("browser")[-20:])


# --- KoboldAI Lite -------------------------------------------------------------------------------


def lite_generates(driver, url: str, server: str, mode: str, key: str = "") -> str:
    """KoboldAI Lite as a writer uses it: dismiss its first-run boxes, Select Endpoint, choose the API, give the
    URL (and key), connect, Story Mode, type, Send; returns the story once the text came back."""
    def dismiss_message():
        with contextlib.suppress(TimeoutException):
            WebDriverWait(driver, 5).until(expected_conditions.visibility_of_element_located((By.ID,
                                                                                                "msgboxcontainer")))
            driver.find_element(By.ID, "msgboxbtnok").click()

    driver.get(url)
    wait(driver, lambda: driver.find_element(By.ID, "connectstatus").text.strip() == "Offline Mode")
    dismiss_message()  # "Failed to connect to AI Horde" (no network)
    welcome = driver.find_element(By.ID, "welcomecontainer")
    if welcome.is_displayed():
        welcome.find_element(By.XPATH, ".//button[normalize-space()='Cancel']").click()
    driver.find_element(By.CSS_SELECTOR, "#topbtn_customendpt a").click()
    dismiss_message()  # "Failed to retrieve AI Horde Worker list!"
    endpoints = Select(driver.find_element(By.ID, "customapidropdown"))
    if mode == "koboldcpp":
        endpoints.select_by_value("1")
        typed(driver.find_element(By.ID, "customkoboldendpoint"), server)
        if key:
            typed(driver.find_element(By.ID, "customkoboldkey"), key)
    else:
        endpoints.select_by_value("2")
        typed(driver.find_element(By.ID, "custom_oai_endpoint"), server)
        if key:
            typed(driver.find_element(By.ID, "custom_oai_key"), key)
        driver.find_element(By.ID, "oaifetchlist").click()
        wait(driver, lambda: driver.execute_script(
            "return Array.from(document.getElementById('custom_oai_model').options).some(o => o.value == arguments[0])",
            MODEL), "the model list never came: " + browser_errors(driver))
        Select(driver.find_element(By.ID, "custom_oai_model")).select_by_value(MODEL)
        chat_box = driver.find_element(By.ID, "useoaichatcompl")
        assert chat_box.is_selected()  # Lite ticks it itself for a model it does not know
        if mode == "completions":
            chat_box.click()
        assert chat_box.is_selected() == (mode == "chat")
    driver.find_element(By.XPATH, "//div[@id='customendpointcontainer']//button[normalize-space()='Ok']").click()
    expected = "KoboldCpp" if mode == "koboldcpp" else "OpenAI Endpoint"
    wait(driver, lambda: driver.find_element(By.ID, "connectstatus").text.startswith(expected),
         "not connected: " + driver.find_element(By.ID, "connectstatus").text + "\n" + browser_errors(driver))
    driver.find_element(By.ID, "btn_settings").click()
    Select(driver.find_element(By.ID, "opmode")).select_by_value("1")  # Story Mode
    driver.find_element(By.XPATH, "//div[@id='settingscontainerfooter']/button[normalize-space()='OK']").click()
    driver.find_element(By.ID, "input_text").send_keys(PROMPT)
    driver.find_element(By.ID, "btnsend").click()
    story = driver.find_element(By.ID, "gametext")
    wait(driver, lambda: len(story.text.strip()) > len(PROMPT) + 5 and
         " ".join(driver.find_element(By.ID, "btnsend").text.split()) == "Generate More",
         "no text came back: " + story.text[:200] + "\n" + browser_errors(driver))
    assert not driver.find_element(By.ID, "msgboxcontainer").is_displayed(), driver.find_element(By.ID,
                                                                                                 "msgboxtxt").text
    return story.text


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["completions", "chat", "koboldcpp"])
@pytest.mark.parametrize("origin", ["loopback", "file"])
def test_koboldai_lite_writes_with_bin_serve(browser, mode, origin, open_server, keyed_server, page_host,
                                             frontends_dir):
    base, records = keyed_server if origin == "file" else open_server
    story = lite_generates(browser, page_url("lite", origin, page_host, frontends_dir), base, mode,
                           key=KEY if origin == "file" else "")
    assert story.startswith(PROMPT)
    path = {"completions": "/v1/completions", "chat": "/v1/chat/completions", "koboldcpp": "/api/"}[mode]
    assert not [r for r in records if " -> 4" in r.getMessage() and path in r.getMessage()]


# --- Mikupad ----------------------------------------------------------------------------------------


def mikupad_generates(driver, url: str, server: str, api: str, key: str = "") -> str:
    """Mikupad as a writer uses it: choose the API, give the server (and key, and model), the length, type,
    Predict; returns the text once the prediction ended."""
    def field(label):
        return driver.find_element(
            By.XPATH, f"//label[contains(@class,'InputBox')][starts-with(normalize-space(text()),'{label}')]//input")

    driver.get(url)
    with contextlib.suppress(TimeoutException):  # once per profile: "Your browser has denied persistent storage..."
        WebDriverWait(driver, 5).until(expected_conditions.alert_is_present()).accept()
    wait(driver, lambda: driver.find_elements(By.ID, "prompt-area"))
    Select(driver.find_element(By.XPATH, "//label[contains(@class,'SelectBox')][normalize-space(text())='API']/select")
           ).select_by_value({"llama.cpp": "0", "openai": "3"}[api])
    time.sleep(0.3)  # choosing the API rewrites the server's URL: type it after
    typed(field("Server"), server)
    if key:
        typed(field("API Key"), key)
    if api == "openai":
        typed(field("Model"), MODEL)
    typed(field("Max Predict Tokens"), "40")
    prompt = driver.find_element(By.ID, "prompt-area")
    typed(prompt, PROMPT)
    predict = driver.find_element(By.CSS_SELECTOR, "button[title^='Run next prediction']")
    wait(driver, predict.is_enabled)
    predict.click()

    def done():
        errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#sidebar .error-text") if e.text]
        assert not errors, errors
        return len(prompt.get_attribute("value")) > len(PROMPT) + 5 and predict.is_enabled()

    wait(driver, done, "no text came back: " + browser_errors(driver))
    machine = "".join(s.get_attribute("textContent")
                      for s in driver.find_elements(By.CSS_SELECTOR, "#prompt-overlay span.machine"))
    assert machine and prompt.get_attribute("value").endswith(machine)  # shown as the model's text
    return prompt.get_attribute("value")


@pytest.mark.slow
@pytest.mark.parametrize("api", ["openai", "llama.cpp"])
@pytest.mark.parametrize("origin", ["loopback", "file"])
def test_mikupad_writes_with_bin_serve(browser, api, origin, open_server, keyed_server, page_host, frontends_dir):
    base, records = keyed_server if origin == "file" else open_server
    text = mikupad_generates(browser, page_url("mikupad", origin, page_host, frontends_dir), base, api,
                             key=KEY if origin == "file" else "")
    assert text.startswith(PROMPT) and len(text) == len(PROMPT) + 40  # Max Predict Tokens 40, none cut
    path = "/v1/completions" if api == "openai" else "/completion"
    assert not [r for r in records if " -> 4" in r.getMessage() and path in r.getMessage()]


# --- a page the server does not answer ---------------------------------------------------------------

FOE_PAGE = """<!doctype html><meta charset="utf-8"><title>foe</title>
<iframe id="frame" sandbox="allow-scripts"></iframe>
<script>
const api = %(api)s, results = {};
async function probe(name, options, path) {
  try { results[name] = "read: " + (await (await fetch(api + (path || "/v1/completions"), options)).text()); }
  catch (e) { results[name] = "blocked: " + e; }
}
const body = JSON.stringify({model: "s", prompt: "the cat", max_tokens: 20});
window.addEventListener("message", e => { results["sandboxed frame (Origin: null)"] = e.data; });
document.getElementById("frame").srcdoc = "<script>fetch(" + JSON.stringify(api + "/v1/completions") +
  ", {method: 'POST', headers: {'Content-Type': 'application/json'}, body: " + JSON.stringify(body) +
  "}).then(r => r.text()).then(t => parent.postMessage('read: ' + t, '*'), e => parent.postMessage('blocked: ' + e, '*'))<\\/script>";
(async () => {
  await probe("models", {}, "/v1/models");
  await probe("json POST (preflighted)", {method: "POST", headers: {"Content-Type": "application/json"}, body});
  await probe("text/plain POST (no preflight)", {method: "POST", headers: {"Content-Type": "text/plain"}, body});
  await probe("no-cors POST", {method: "POST", mode: "no-cors", body}, "/api/generate");
  while (!results["sandboxed frame (Origin: null)"]) await new Promise(r => setTimeout(r, 50));
  document.title = JSON.stringify(results);
})();
</script>"""


@pytest.mark.slow
def test_a_website_the_server_does_not_answer_reads_nothing_and_runs_nothing(browser, open_server, tmp_path):
    """A page on another host (here foe.example, resolved to this machine: no loopback name) and a sandboxed frame
    in it (Origin: null): their requests are refused before any work, preflighted or not, and the page can read
    no reply. The same server answers a page on a loopback address (the tests above)."""
    base, records = open_server
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "foe.html").write_text(FOE_PAGE % {"api": json.dumps(base)})
    before = len(records)
    with static_files(str(tmp_path / "site")) as site:
        browser.get(site.replace("127.0.0.1", FOE) + "/foe.html")
        wait(browser, lambda: browser.title.startswith("{"), "the page never finished: " + browser_errors(browser))
    results = json.loads(browser.title)
    assert len(results) == 5 and all(v.startswith("blocked: TypeError") or v == "read: " for v in results.values()), \
        results  # a no-cors reply is opaque: empty to the page
    refused = [r.getMessage() for r in records[before:]]
    assert all("-> 403" in m and "does not answer pages from" in m for m in refused), refused
    assert any(f"http://{FOE}:" in m for m in refused) and any("pages from null" in m for m in refused)
    assert len(refused) == 5  # the GET, the preflight, text/plain, no-cors and the frame's preflight: no request ran
