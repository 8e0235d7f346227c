"""Screenshot of the Gradio demo in a real browser, at its default settings, after one *Segment*.

Not part of the package or its tests: it needs Chromium, its driver and Selenium
(``apt-get install chromium chromium-driver``, ``pip install selenium``) besides the ``demo``
extra. It starts ``examples/gradio_demo.py`` on a local port, uploads IMAGE, presses *Segment*
with every widget at its default, waits for the overlay and saves the page:

    python examples/demo_screenshot.py --model DIR --image scene.png --output docs/images/demo_browser.png
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent


def _wait_for_server(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the demo did not answer at {url} within {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder for the demo")
    parser.add_argument("--image", required=True, type=Path, help="image to upload")
    parser.add_argument("--output", required=True, type=Path, help="PNG to write")
    parser.add_argument("--port", type=int, default=7861)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1500)
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "gradio_demo.py"), "--model", args.model, "--port", str(args.port)]
    )
    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={args.width},{args.height}",
    ):
        options.add_argument(flag)
    driver = None
    try:
        url = f"http://127.0.0.1:{args.port}/"
        _wait_for_server(url, 180)
        driver = webdriver.Chrome(options=options)
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        upload = wait.until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]"))
        )
        upload.send_keys(str(args.image.resolve()))
        time.sleep(3)  # the upload preview
        button = wait.until(
            expected_conditions.element_to_be_clickable((By.XPATH, "//button[text()='Segment']"))
        )
        button.click()
        # The overlay and the tree are <img> elements once the segmentation has returned.
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "img")) >= 3)
        time.sleep(3)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.output))
        print(f"wrote {args.output}")
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
