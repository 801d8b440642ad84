"""Drives Debian's chromium (headless, through chromium-driver) against a gateway: from a page
of the gateway's origin, user 1 then user 2 fetch the same URLs with their own tokens, as a
single-page app would, through the browser's own HTTP cache (on disk, a fresh profile).

    python cache.py BASE_URL TOKEN_1 TOKEN_2

Prints one JSON object: for each URL, the status and body each user got."""

import json
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

base, token1, token2 = sys.argv[1:4]
profile = tempfile.mkdtemp(prefix="gateway-chromium-")
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", "--no-proxy-server"):
    opts.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
driver.set_script_timeout(30)
try:
    driver.get(base + "/healthz")
    result = driver.execute_async_script(
        """
        const [paths, tokens, done] = arguments;
        (async () => {
          const out = {};
          for (const path of paths) {
            out[path] = [];
            for (const t of tokens) {
              const r = await fetch(path, { headers: { Authorization: 'Bearer ' + t } });
              out[path].push({ status: r.status, body: await r.text() });
            }
          }
          done(out);
        })().catch(e => done({ error: String(e) }));
        """,
        ["/api/profile/me", "/api/profile/1"],
        [token1, token2],
    )
    print(json.dumps(result))
finally:
    driver.quit()
