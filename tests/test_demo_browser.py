"""The demo end to end in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by selenium): load the page, click Generate, wait for both images, screenshot; a bad
upload shows an error in the page and the session keeps working."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from .conftest import build_tiny_pipeline
from .test_demo import FAST, close_when_idle, free_port, make_adapter

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver")
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(f"needs Chromium at {CHROMIUM} and chromedriver at {CHROMEDRIVER} "
                "(apt-get install -y chromium chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# Seconds of patience, not a speed assertion: the tiny pipeline answers in about a second, but a
# 2-core machine shared with a training job can stall the server for much longer.
TIMEOUT = 180


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The demo on the tiny pipeline with one registered adapter; yields (url, pipe)."""
    from concept_erase.demo import build_demo, launch
    from concept_erase.world.models import WorldClassifier

    pipe = build_tiny_pipeline()
    d = tmp_path_factory.mktemp("browser-adapters")
    make_adapter(pipe.unet).save(d / "no-red.safetensors")
    demo = build_demo(pipe, WorldClassifier().eval(), d, sampling=FAST)
    _, url, _ = launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield url, pipe
    close_when_idle(demo)


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 "--window-size=1400,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(driver, url):
    driver.get(url)
    WebDriverWait(driver, TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate"))


def _loaded_images(driver, selector: str) -> int:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].filter(i => i.complete && i.naturalWidth > 0).length",
        selector)


def _text(driver, elem_id: str) -> str:
    return driver.find_element(By.ID, elem_id).text


def _busy(driver) -> bool:
    """Whether any output still shows Gradio's progress tracker (its status element loses `hide`)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('[data-testid=status-tracker]')].some(e => !e.classList.contains('hide'))")


def _generate(driver, seeds: int = 4):
    WebDriverWait(driver, TIMEOUT).until(lambda d: not _busy(d))  # a progress overlay would take the click
    driver.find_element(By.CSS_SELECTOR, "#generate").click()
    WebDriverWait(driver, TIMEOUT).until(lambda d: _loaded_images(d, "#pair img") >= 2
                                         and "seed" in _text(d, "verdict-unlearned"))
    # the first pair shows before the gallery's other seeds; wait for those too
    WebDriverWait(driver, TIMEOUT).until(lambda d: _loaded_images(d, "#gallery img") >= 2 * seeds and not _busy(d))


def test_click_generate_shows_both_images(app, browser, tmp_path):
    url, _ = app
    _open(browser, url)
    assert "no-red" in _text(browser, "adapters") and "semu" in _text(browser, "adapter-info")
    _generate(browser)  # 4 seeds: the pair in the slider, 8 images in the gallery
    sizes = browser.execute_script("return [...document.querySelectorAll('#pair img')].map(i => i.naturalWidth)")
    assert sizes[:2] == [256, 256]
    assert _text(browser, "verdict-original").startswith("Original · seed 0")
    assert "classifier sees:" in _text(browser, "verdict-unlearned")
    shot = tmp_path / "demo.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def _upload(driver, path: Path):
    if not driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"):
        driver.find_element(By.CSS_SELECTOR, "#upload-accordion button").click()
        WebDriverWait(driver, TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))


def test_bad_uploads_show_an_error_and_the_session_keeps_working(app, browser, tmp_path):
    url, pipe = app
    _open(browser, url)
    pickled = tmp_path / "evil.safetensors"
    torch.save({"unet.x.lora_A.weight": torch.zeros(1)}, pickled)
    _upload(browser, pickled)
    WebDriverWait(browser, TIMEOUT).until(lambda d: "Upload refused" in _text(d, "upload-status"))
    assert "pickled PyTorch checkpoint" in _text(browser, "upload-status")

    other = make_adapter(pipe.unet, widen=3).save(tmp_path / "other-model.safetensors")
    _upload(browser, other)
    WebDriverWait(browser, TIMEOUT).until(lambda d: "made for another UNet" in _text(d, "upload-status"))
    assert "/tmp" not in _text(browser, "upload-status")

    good = make_adapter(pipe.unet, seed=3).save(tmp_path / "mine.safetensors")
    _upload(browser, good)
    WebDriverWait(browser, TIMEOUT).until(lambda d: "Loaded" in _text(d, "upload-status"))
    assert "uploaded: mine.safetensors" in _text(browser, "adapters")
    _generate(browser)  # the session still works, with the uploaded adapter active
    browser.save_screenshot(str(tmp_path / "after-uploads.png"))
