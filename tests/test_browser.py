"""The web UI in a real browser: Debian's Chromium driven by Playwright against a live `speech7 serve`.

Every card is exercised the way a person uses it: type a key, click, read what the page shows. The realtime
card gets its microphone from Chromium's fake capture device, fed with the JFK recording.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
ADMIN_KEY = "s7-browser-test-admin-key-0123456789"
JFK_PHRASE = re.compile(r"ask not what your country can do for you", re.IGNORECASE)
SERVER_START_TIMEOUT_S = 180
MODEL_WAIT_MS = 240_000  # first use loads Whisper/Piper on a small shared CPU; generous but bounded


@dataclass(frozen=True)
class LiveServer:
    url: str
    admin_key: str
    user_key: str
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)  # readiness poll of a starting subprocess, not a timing assumption in a test
    pytest.fail(f"server not healthy after {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def chromium_path() -> Path:
    if not CHROMIUM.is_file():
        reason = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("S7_REQUIRE_ALL") == "1":
            pytest.fail(reason + " and S7_REQUIRE_ALL=1")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory, models_root: Path, chromium_path: Path) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("server-data")
    log = data / "server.log"
    port = _free_port()
    env = {
        **os.environ,
        "S7_PORT": str(port),
        "S7_HOST": "127.0.0.1",
        "S7_DATA_DIR": str(data),
        "S7_ADMIN_KEY": ADMIN_KEY,
        "S7_MODELS_DIR": str(models_root),
        "HF_HUB_OFFLINE": "1",
    }
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(url, proc, log)
        r = httpx.post(
            f"{url}/accounts", headers={"x-api-key": ADMIN_KEY}, timeout=30,
            json={"startingMinutes": 30, "companyName": "Browser Co", "contactName": "Tess Tester"},
        )
        assert r.status_code == 201, r.text
        yield LiveServer(url, ADMIN_KEY, r.json()["apiKey"], log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def fake_mic_wav(tmp_path_factory: pytest.TempPathFactory, testdata: Path) -> Path:
    """jfk.flac as 48 kHz 16-bit mono WAV (what Chromium's fake capture device reads), with a second of silence
    after it so the looping device leaves a pause for endpoint detection."""
    import soundfile as sf
    from scipy.signal import resample_poly

    audio, rate = sf.read(testdata / "en" / "jfk.flac", dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != 48000:
        mono = resample_poly(mono, 48000, rate).astype(np.float32)
    mono = np.concatenate([mono, np.zeros(48000, dtype=np.float32)])
    path = tmp_path_factory.mktemp("mic") / "jfk-48k.wav"
    sf.write(path, mono, 48000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(chromium_path: Path, fake_mic_wav: Path) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(chromium_path),
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={fake_mic_wav}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        yield b
        b.close()


@dataclass
class Tab:
    page: object
    errors: list[str]


@pytest.fixture
def tab(browser, live_server: LiveServer) -> Iterator[Tab]:
    """A fresh browser profile per test (empty localStorage, no cookies), console errors collected."""
    context = browser.new_context(viewport={"width": 1360, "height": 900}, color_scheme="light")
    context.grant_permissions(["microphone"], origin=live_server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield Tab(page, errors)
    context.close()


def _use_key(page, server: LiveServer, key: str | None = None) -> None:
    page.goto(server.url + "/")
    page.fill("#api-key", key or server.user_key)
    page.click("#key-form button[type=submit]")


def test_home_page_loads_with_csp_and_shows_minutes(tab: Tab, live_server: LiveServer) -> None:
    from playwright.sync_api import expect

    page = tab.page
    resp = page.goto(live_server.url + "/")
    assert resp is not None and resp.status == 200
    csp = resp.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self' ws: wss:" in csp and "media-src 'self' blob:" in csp
    expect(page.locator("#card-account")).to_be_visible()
    page.fill("#api-key", live_server.user_key)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#minutes-remaining")).to_have_text("30")
    expect(page.locator("#caps")).to_contain_text("Speech to text")
    expect(page.locator("#speeches")).to_contain_text("No speeches yet")
    # The key survives a reload (localStorage) and the page still works from it.
    page.reload()
    expect(page.locator("#minutes-remaining")).to_have_text("30")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)
    assert tab.errors == [], tab.errors  # CSP violations and script errors show up here


def test_invalid_key_error_is_shown_in_words(tab: Tab, live_server: LiveServer) -> None:
    from playwright.sync_api import expect

    _use_key(tab.page, live_server, "not-a-real-key")
    expect(tab.page.locator("#card-account .status")).to_contain_text("Invalid API key")
    tab.page.click("#rt-start")
    expect(tab.page.locator("#card-realtime .status")).to_contain_text(
        re.compile("invalid API key", re.IGNORECASE), timeout=30_000
    )


def test_tts_card_plays_audio_and_records_the_speech(tab: Tab, live_server: LiveServer) -> None:
    from playwright.sync_api import expect

    page = tab.page
    _use_key(page, live_server)
    text = "The quick brown fox jumps over the lazy dog. Then it runs into the forest."
    page.fill("#tts-text", text)
    page.click("#tts-form button[type=submit]")
    page.wait_for_function(
        "() => { const a = document.getElementById('tts-audio'); return a.ended || a.currentTime > 0.3; }",
        timeout=MODEL_WAIT_MS,
    )
    expect(page.locator("#card-tts .status")).to_contain_text("Done", timeout=MODEL_WAIT_MS)
    expect(page.locator("#speeches li").first).to_contain_text("The quick brown fox")
    assert int(page.evaluate("document.getElementById('tts-audio').duration")) >= 2
    assert tab.errors == [], tab.errors


def test_stt_card_shows_the_transcript(tab: Tab, live_server: LiveServer, testdata: Path) -> None:
    from playwright.sync_api import expect

    page = tab.page
    _use_key(page, live_server)
    page.set_input_files("#stt-file", str(testdata / "en" / "jfk.flac"))
    page.click("#stt-form button[type=submit]")
    expect(page.locator("#stt-text")).to_contain_text(JFK_PHRASE, timeout=MODEL_WAIT_MS)
    expect(page.locator("#stt-meta")).to_contain_text("Language: en")
    expect(page.locator("#stt-segments li").first).to_contain_text("0:00")


def test_subtitle_job_card_polls_and_shows_srt(tab: Tab, live_server: LiveServer, testdata: Path) -> None:
    from playwright.sync_api import expect

    page = tab.page
    _use_key(page, live_server)
    page.set_input_files("#sub-file", str(testdata / "en" / "jfk.flac"))
    page.check("#sub-async")
    page.click("#sub-form button[type=submit]")
    expect(page.locator("#card-subtitle .status")).to_contain_text("Subtitles ready", timeout=MODEL_WAIT_MS)
    expect(page.locator("#sub-preview")).to_contain_text("00:00:00,")
    expect(page.locator("#sub-preview")).to_contain_text(re.compile("country", re.IGNORECASE))


def test_realtime_card_transcribes_the_microphone(tab: Tab, live_server: LiveServer) -> None:
    from playwright.sync_api import expect

    page = tab.page
    _use_key(page, live_server)
    page.click("#rt-start")
    expect(page.locator("#rt-stop")).to_be_enabled(timeout=30_000)
    expect(page.locator("#rt-transcript")).to_contain_text(re.compile("country", re.IGNORECASE), timeout=MODEL_WAIT_MS)
    page.click("#rt-stop")
    expect(page.locator("#card-realtime .status")).to_have_text("Finished.", timeout=60_000)
    expect(page.locator("#rt-start")).to_be_enabled()
    assert tab.errors == [], tab.errors


def test_admin_refuses_user_key_and_creates_an_account(tab: Tab, live_server: LiveServer) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto(live_server.url + "/#admin")
    page.fill("#admin-key", live_server.user_key)
    page.click("#admin-login button[type=submit]")
    expect(page.locator("#admin-login .status")).to_contain_text("Only admin API keys")
    expect(page.locator("#admin-console")).to_be_hidden()

    page.fill("#admin-key", live_server.admin_key)
    page.click("#admin-login button[type=submit]")
    expect(page.locator("#admin-console")).to_be_visible()
    expect(page.locator("#accounts-table")).to_contain_text("Browser Co")
    page.fill("#ca-start", "12.5")
    page.fill("#ca-company", "Created In Browser d.o.o.")
    page.fill("#ca-contact", "Ana Admin")
    page.click("#create-form button[type=submit]")
    key_box = page.locator("#new-key-value")
    expect(key_box).to_be_visible()
    new_key = key_box.inner_text().strip()
    assert len(new_key) >= 20
    expect(page.locator("#accounts-table")).to_contain_text("Created In Browser d.o.o.")
    # The displayed key is real: it authenticates and carries the minutes typed into the form.
    caps = httpx.get(f"{live_server.url}/account/capabilities", headers={"x-api-key": new_key}, timeout=30)
    assert caps.status_code == 200 and caps.json()["minutesRemaining"] == 12.5

    # The session survives a reload (HttpOnly cookie); disabling the account through the table takes effect.
    page.reload()
    row = page.locator("#accounts-table tr", has_text="Created In Browser d.o.o.")
    row.get_by_role("button", name="Disable").click()
    expect(row).to_contain_text("disabled")
    r = httpx.get(f"{live_server.url}/account/capabilities", headers={"x-api-key": new_key}, timeout=30)
    assert r.status_code == 403
    page.click("#admin-logout")
    expect(page.locator("#admin-login-card")).to_be_visible()
