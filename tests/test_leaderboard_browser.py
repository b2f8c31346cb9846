"""The HTML leaderboard in a real browser: headless Chromium opens it, sorts a column, takes a screenshot.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package (``.ci/run`` installs them); where
they cannot be had the test is skipped with the reason, never passed silently.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from robustmsa.leaderboard import build, to_html

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="no headless browser: apt-get install chromium chromium-driver")


def _frame() -> pd.DataFrame:
    rows = []
    curves = {"alpha": [0.9, 0.5], "beta": [0.7, 0.65], "lf_dnn": [0.8, 0.4]}
    for method, values in curves.items():
        for level, value in zip((0.0, 0.5), values):
            rows.append({"method": method, "dataset_name": "d", "dataset": "fp", "seed": 1, "train_noise": None,
                         "config_hash": "h", "corruption": "c", "level": level, "corruption_seed": 1,
                         "metric": "Non0_acc_2", "value": value, "higher_is_better": True, "digest": method})
    return pd.DataFrame(rows)


def test_html_leaderboard_sorts_in_headless_chromium(tmp_path):
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    board = build(_frame(), "acc2")
    page = tmp_path / "board.html"
    page.write_text(to_html(board))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.set_window_size(1400, 700)
        driver.get(page.as_uri())
        method_column = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#board tbody td:nth-child(2)")]
        assert method_column == ["alpha", "beta", "lf_dnn"]  # ranked by robust score: 0.7, 0.675, 0.6
        clean_header = [h for h in driver.find_elements(By.CSS_SELECTOR, "#board th") if h.text == "clean"][0]
        clean_header.click()  # ascending
        clean_header.click()  # descending
        method_column = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#board tbody td:nth-child(2)")]
        assert method_column == ["alpha", "lf_dnn", "beta"]  # sorted by clean score, descending
        shot = tmp_path / "board.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    finally:
        driver.quit()
