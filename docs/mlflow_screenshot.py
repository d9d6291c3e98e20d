"""Re-take docs/mlflow-trace.png: the demo's MLflow trace in ``mlflow ui``, in headless Chromium.

    python docs/mlflow_screenshot.py [OUT.png]

Needs the full ``mlflow`` package and selenium (the ``test`` extra) and Debian's ``chromium`` and ``chromedriver``.
Records ``python -m rlm_events demo --mlflow`` into a SQLite store in a temporary directory, serves it with
``mlflow server`` on 127.0.0.1, opens the trace (the MLflow Assistant panel closed, autolog's predictor spans
collapsed, the guard's refused step selected) and saves the page.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def shoot(base: str, store: str, out: Path) -> None:
    import mlflow
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    mlflow.set_tracking_uri(store)
    experiment = mlflow.get_experiment_by_name("rlm-events demo")
    assert experiment is not None
    (info,) = mlflow.search_traces(locations=[experiment.experiment_id], return_type="list")
    spans = mlflow.get_trace(info.trace_id).data.spans
    collapse = [s.span_id for s in spans if s.name == "Predict.forward"]
    refused = sorted((s for s in spans if s.name == "execute_code"), key=lambda s: s.start_time_ns)[1]

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tempfile.mkdtemp()}",
        "--window-size=1500,1560",
        "--hide-scrollbars",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def click(element: object) -> None:
        driver.execute_script("arguments[0].click()", element)  # overlays would intercept a real click
        time.sleep(0.5)

    def click_label(label: str) -> None:
        for button in driver.find_elements(By.CSS_SELECTOR, f'button[aria-label="{label}"]'):
            if button.is_displayed():
                click(button)
                return

    try:
        driver.get(f"{base}/#/experiments/{experiment.experiment_id}/traces?selectedEvaluationId={info.trace_id}")
        time.sleep(10)
        click_label("Close")  # the MLflow Assistant side panel
        click_label("Close guidance")
        click_label("Full screen")
        for span_id in collapse:
            click(driver.find_element(By.CSS_SELECTOR, f'[data-testid="toggle-span-expanded-{span_id}"]'))
        click(driver.find_element(By.CSS_SELECTOR, f'[data-testid="span-title-row-{refused.span_id}"]'))
        time.sleep(2)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "mlflow-trace.png"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as work:
        store = f"sqlite:///{Path(work) / 'mlruns.db'}"
        subprocess.run(
            [sys.executable, "-m", "rlm_events", "demo", "--mlflow", "--tracking-uri", store],
            cwd=work,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        port = free_port()
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host", "127.0.0.1"]
        server = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(base)
            shoot(base, store, out)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
