"""docs/write.png: the writing page with a suggestion showing, in headless Chromium (as tests/test_page.py drives it).

    python3 scripts/page_screenshot.py --url http://127.0.0.1:8080 --output docs/write.png

Needs a running bin/serve, selenium, chromium and chromium-driver (scripts/setup_tests.sh installs them).
"""

import argparse
import shutil

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--output", default="docs/write.png")
    parser.add_argument("--seed_text", default=TEXT, help="What the writer has typed.")
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,620",
                     "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(args.url + "/write")
        driver.execute_script("localStorage.clear(); localStorage.setItem('kerascharrnn.write.text', arguments[0])",
                              args.seed_text)
        driver.get(args.url + "/write")
        wait = WebDriverWait(driver, 60, poll_frequency=0.05)
        wait.until(lambda d: d.execute_script("return document.getElementById('model').textContent"))
        ActionChains(driver).send_keys(Keys.TAB).perform()
        wait.until(lambda d: d.execute_script("const s = document.getElementById('status').textContent;"
                                              "return s.startsWith('Suggestion') && !s.includes('coming')"))
        ActionChains(driver).send_keys(Keys.ARROW_DOWN).perform()
        wait.until(lambda d: d.execute_script("const s = document.getElementById('status').textContent;"
                                              "return s.startsWith('Suggestion 2') && !s.includes('coming')"))
        driver.save_screenshot(args.output)
        print("wrote", args.output)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
