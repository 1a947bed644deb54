"""Screenshot of the demo with the shipped models: python tools/app_screenshot.py [--out PATH] [app.py args].

Starts `python app.py` on a free local port, types a prompt in Debian's chromium (playwright), waits for both
videos to play, and saves a full-page PNG (default assets/examples/app_screenshot.png) for the README.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
PROMPT = "a woman with long red hair and green eyes, pale skin, with glasses, talking against a teal background"
BOTH_PLAY = (
    "() => { const v = [...document.querySelectorAll('#few_video video, #base_video video')];"
    " return v.length === 2 && v.every(x => x.duration > 0 && x.videoWidth > 0); }"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "assets" / "examples" / "app_screenshot.png"))
    ap.add_argument("--seed", type=int, default=7)
    args, app_args = ap.parse_known_args(argv)
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "app.py", *app_args], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    return proc.returncode or 1
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.locator("#prompt textarea").fill(PROMPT)
            seed = page.locator("input[type=number]").first
            seed.fill(str(args.seed))
            page.locator("#generate").click()
            page.wait_for_function(BOTH_PLAY, timeout=120_000)
            time.sleep(1.0)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        print(f"wrote {args.out}")
        return 0
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    raise SystemExit(main())
