"""The web UI in a real browser: Debian's Chromium driven by Playwright against a live `speech7 serve`.

Every card is exercised the way a person uses it: type a key, click, read what the page shows. The realtime
card gets its microphone from Chromium's fake capture device, fed with the JFK recording. The demo account
uses Whisper tiny.en (its `sttApiKey`) to keep the run short on a small CPU.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from server.launcher import running_process

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
    env = {"S7_DATA_DIR": str(data), "S7_ADMIN_KEY": ADMIN_KEY, "S7_MODELS_DIR": str(models_root), "HF_HUB_OFFLINE": "1"}
    with running_process(env, log=log, timeout_s=SERVER_START_TIMEOUT_S) as server:
        r = httpx.post(
            f"{server.url}/accounts", headers={"x-api-key": ADMIN_KEY}, timeout=30,
            json={
                "startingMinutes": 30, "companyName": "Browser Co", "contactName": "Tess Tester",
                "sttApiKey": "whisper:tiny.en",
            },
        )
        assert r.status_code == 201, r.text
        yield LiveServer(server.url, ADMIN_KEY, r.json()["apiKey"], log)


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
def browser(chromium_path: Path, fake_mic_wav: Path) -> Iterator[Any]:
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
    page: Any  # playwright.sync_api.Page, imported lazily so collection works without Playwright
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


def test_api_errors_are_shown_in_words(tab: Tab, live_server: LiveServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = tab.page
    _use_key(page, live_server, "not-a-real-key")
    expect(page.locator("#card-account .status")).to_contain_text("Invalid API key (HTTP 401")
    page.click("#tts-form button[type=submit]")
    expect(page.locator("#card-tts .status")).to_contain_text("Invalid API key")
    page.click("#rt-start")
    expect(page.locator("#card-realtime .status")).to_contain_text(
        re.compile("invalid API key", re.IGNORECASE), timeout=30_000
    )
    expect(page.locator("#rt-start")).to_be_enabled()  # the card is usable again after the refusal

    # With a good key, a file that is not media gets the server's reason, not a silent failure.
    _use_key(page, live_server)
    junk = tmp_path / "broken.wav"
    junk.write_bytes(b"RIFF this is not really a wave file" * 40)
    page.set_input_files("#stt-file", str(junk))
    page.click("#stt-form button[type=submit]")
    status = page.locator("#card-stt .status")
    expect(status).to_contain_text("Error:", timeout=60_000)
    expect(status).to_contain_text("HTTP 422")
    assert len(status.inner_text()) > len("Error: (HTTP 422)") + 10  # a reason in words, not just a code
    expect(page.locator("#stt-result")).to_be_hidden()


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
    # The history's download button saves the stored MP3.
    with page.expect_download() as info:
        page.locator("#speeches li").first.get_by_role("button", name="Download").click()
    saved = Path(info.value.path()).read_bytes()
    assert info.value.suggested_filename.endswith(".mp3")
    assert len(saved) > 10_000 and (saved[:3] == b"ID3" or (saved[0] == 0xFF and saved[1] & 0xE0 == 0xE0))
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
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#card-stt").screenshot(path=str(ARTIFACTS / "stt-card.png"))


def test_subtitle_card_downloads_srt(tab: Tab, live_server: LiveServer, testdata: Path) -> None:
    from playwright.sync_api import expect

    page = tab.page
    _use_key(page, live_server)
    page.set_input_files("#sub-file", str(testdata / "en" / "jfk.flac"))
    page.click("#sub-form button[type=submit]")
    expect(page.locator("#card-subtitle .status")).to_contain_text("Subtitles ready", timeout=MODEL_WAIT_MS)
    with page.expect_download() as info:
        page.click("#sub-download")
    srt = Path(info.value.path()).read_text(encoding="utf-8")
    assert info.value.suggested_filename.endswith(".srt")
    assert re.search(r"^1\r?\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}", srt, re.MULTILINE), srt
    assert re.search("country", srt, re.IGNORECASE), srt


def test_subtitle_job_card_polls_and_shows_srt(tab: Tab, live_server: LiveServer, testdata: Path) -> None:
    from playwright.sync_api import expect

    page = tab.page
    _use_key(page, live_server)
    page.set_input_files("#sub-file", str(testdata / "en" / "jfk.flac"))
    page.check("#sub-async")
    page.click("#sub-form button[type=submit]")
    expect(page.locator("#card-subtitle .status")).to_contain_text("Subtitles ready", timeout=MODEL_WAIT_MS)
    expect(page.locator("#sub-progress")).to_be_hidden()
    expect(page.locator("#sub-meta")).to_contain_text("s of audio")
    expect(page.locator("#sub-preview")).to_contain_text("00:00:00,")
    expect(page.locator("#sub-preview")).to_contain_text(re.compile("country", re.IGNORECASE))
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#card-subtitle").screenshot(path=str(ARTIFACTS / "subtitle-card.png"))


def test_realtime_card_transcribes_the_microphone(tab: Tab, live_server: LiveServer) -> None:
    from playwright.sync_api import expect

    page = tab.page
    _use_key(page, live_server)
    page.click("#rt-start")
    expect(page.locator("#rt-stop")).to_be_enabled(timeout=30_000)
    expect(page.locator("#rt-transcript")).to_contain_text(re.compile("country", re.IGNORECASE), timeout=MODEL_WAIT_MS)
    page.click("#rt-stop")
    expect(page.locator("#card-realtime .status")).to_have_text("Finished.", timeout=60_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#card-realtime").screenshot(path=str(ARTIFACTS / "realtime-card.png"))
    expect(page.locator("#rt-start")).to_be_enabled()
    assert tab.errors == [], tab.errors


def test_realtime_card_shows_why_two_way_translation_is_refused(tab: Tab, live_server: LiveServer) -> None:
    """English <-> German on a server with no en->de translation model: the server's refusal is shown in
    words (naming the missing direction), not swallowed, and the card is ready for another try."""
    from playwright.sync_api import expect

    page = tab.page
    _use_key(page, live_server)
    page.select_option("#rt-lang-a", "en")
    page.select_option("#rt-lang-b", "de")
    page.click("#rt-start")
    status = page.locator("#card-realtime .status")
    expect(status).to_contain_text("en->de", timeout=60_000)
    expect(status).to_contain_text("no translation model")
    expect(page.locator("#rt-start")).to_be_enabled()
    assert tab.errors == [], tab.errors


def test_admin_refuses_user_key_creates_an_account_and_signs_out(tab: Tab, live_server: LiveServer) -> None:
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
    cookie = next(c for c in page.context.cookies() if c["name"] == "s7_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
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
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)

    # The session survives a reload (HttpOnly cookie); adding minutes and disabling through the table take effect.
    page.reload()
    row = page.locator("#accounts-table tr", has_text="Created In Browser d.o.o.")
    row.get_by_placeholder("+min").fill("7.5")
    row.get_by_role("button", name="Add").click()
    expect(page.locator("#card-accounts .status")).to_contain_text("now has 20 minutes")
    row.get_by_role("button", name="Usage").click()
    expect(page.locator("#usage-table")).to_contain_text("credit")
    # Rotating asks for confirmation first; the old key stops working and the new one is shown once.
    page.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="New key").click()
    rotated = page.locator("#card-accounts .status code.rotated-key")
    expect(rotated).to_be_visible()
    newer_key = rotated.inner_text().strip()
    assert newer_key != new_key
    r = httpx.get(f"{live_server.url}/account/capabilities", headers={"x-api-key": new_key}, timeout=30)
    assert r.status_code == 401
    row.get_by_role("button", name="Disable").click()
    expect(row).to_contain_text("disabled")
    r = httpx.get(f"{live_server.url}/account/capabilities", headers={"x-api-key": newer_key}, timeout=30)
    assert r.status_code == 403

    # Signing out ends the session: the page shows the login again, also after a reload, and the old cookie
    # no longer opens the admin API.
    page.click("#admin-logout")
    expect(page.locator("#admin-login-card")).to_be_visible()
    expect(page.locator("#admin-console")).to_be_hidden()
    page.reload()
    expect(page.locator("#admin-login-card")).to_be_visible()
    expect(page.locator("#admin-console")).to_be_hidden()
    old = httpx.get(f"{live_server.url}/accounts", cookies={"s7_admin": cookie["value"]}, timeout=30)
    assert old.status_code == 401
    # Only the expected refusals (the user key's 403, the signed-out session's 401) reach the console.
    assert all(re.search(r"status of 40[13]", e) for e in tab.errors), tab.errors
