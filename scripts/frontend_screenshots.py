"""docs/frontends/*.png: each writing frontend of ../shared/frontends writing with bin/serve, in headless Chromium,
driven through its own UI as tests/test_frontends.py drives it (its helpers, reused).

    bin/serve --checkpoint ../shared/data/torch-rnn-shakespeare-2x128.t7 --port 8080 &
    python3 scripts/frontend_screenshots.py --server http://127.0.0.1:8080 --output docs/frontends

Opens each frontend from a static server on another loopback port (a cross-origin page, as a writer who serves
the file has it). Needs selenium, chromium and chromium-driver (scripts/setup_tests.sh installs them) and
../shared/frontends beside the checkout.
"""

import argparse
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

PROMPTS = {"lite": "ROMEO: But soft, what light through yonder window breaks?",  # (Enter sends, in Lite)
           "mikupad": "ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\n"}
SHOTS = (("koboldai-lite.png", "lite", "completions"), ("koboldai-lite-koboldcpp.png", "lite", "koboldcpp"),
         ("mikupad.png", "mikupad", "llama.cpp"), ("mikupad-openai.png", "mikupad", "openai"))


def main():
    import test_frontends as frontends
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8080", help="A running bin/serve.")
    parser.add_argument("--output", default=os.path.join(REPO, "docs", "frontends"))
    parser.add_argument("--frontends", default=os.path.join(os.path.dirname(REPO), "shared", "frontends"))
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    frontends.MODEL = __import__("httpx").get(args.server + "/v1/models").json()["data"][0]["id"]
    with frontends.static_files(args.frontends) as host:
        for name, frontend, mode in SHOTS:
            options = webdriver.ChromeOptions()
            options.binary_location = shutil.which("chromium")
            with tempfile.TemporaryDirectory() as profile:
                for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,760",
                                 "--hide-scrollbars", f"--user-data-dir={profile}",
                                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
                    options.add_argument(argument)
                options.set_capability("unhandledPromptBehavior", "accept")
                driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
                try:
                    frontends.PROMPT = PROMPTS[frontend]
                    url = frontends.page_url(frontend, "loopback", host, args.frontends)
                    if frontend == "lite":
                        frontends.lite_generates(driver, url, args.server, mode)
                    else:
                        frontends.mikupad_generates(driver, url, args.server, mode)
                    driver.save_screenshot(os.path.join(args.output, name))
                    print("wrote", os.path.join(args.output, name))
                finally:
                    driver.quit()


if __name__ == "__main__":
    main()
