"""Drives Debian's chromium (headless, through chromium-driver) through the admin dashboard.

    python dashboard.py ADMIN_URL TOKEN SCREENSHOT

1. A wrong token first: the page must say the token was refused and show no data.
2. The right token: the page lists the routes and upstream groups; prints one JSON line
   {"loaded": true, "routes": [...], "backends": {address: health}} and waits for a line on
   stdin (the test kills a backend, then writes one).
3. Polls the page until a backend shows `unhealthy`; prints {"unhealthy": address,
   "seconds": time from the line on stdin}; writes the screenshot (a PNG) to SCREENSHOT.
"""

import json
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

base, token, screenshot = sys.argv[1:4]
profile = tempfile.mkdtemp(prefix="gateway-chromium-")
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", "--no-proxy-server", "--window-size=1280,1400"):
    opts.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def wait(what, check, limit=20.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}; page: {driver.page_source[:2000]}")


def login(value):
    box = wait("the token box", lambda: driver.find_element(By.ID, "token"))
    box.clear()
    box.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, "#form button").click()


def visible(element_id):
    return "hidden" not in (driver.find_element(By.ID, element_id).get_attribute("class") or "")


def cells(table_id, column):
    # Read in one script: the page re-renders its tables every 2 s, so element handles go stale.
    return driver.execute_script(
        "return [...document.querySelectorAll('#' + arguments[0] + ' tr')].slice(1)"
        ".map(r => r.cells.length > arguments[1] ? r.cells[arguments[1]].innerText : null)"
        ".filter(x => x !== null)", table_id, column)


try:
    driver.get(base + "/")
    login("not-the-admin-token-at-all")
    message = wait("the refusal", lambda: driver.find_element(By.ID, "error").text)
    refused = {"message": message, "data_shown": visible("app"),
               "routes_rendered": len(driver.find_elements(By.CSS_SELECTOR, "#routes tr"))}
    login(token)
    wait("the tables", lambda: visible("app") and len(cells("upstreams", 3)) > 0
         and all(c for c in cells("upstreams", 3)))
    backends = dict(zip(cells("upstreams", 2), cells("upstreams", 3)))
    print(json.dumps({"refused": refused, "loaded": True, "routes": cells("routes", 0),
                      "backends": backends}), flush=True)
    sys.stdin.readline()
    killed = time.monotonic()

    def unhealthy():
        for address, health in zip(cells("upstreams", 2), cells("upstreams", 3)):
            if health == "unhealthy":
                return address
        return None

    address = wait("a backend shown unhealthy", unhealthy, limit=30)
    seconds = time.monotonic() - killed
    driver.save_screenshot(screenshot)
    print(json.dumps({"unhealthy": address, "seconds": seconds}), flush=True)
finally:
    driver.quit()
