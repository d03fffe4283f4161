"""The web UI in a real browser: Debian's Chromium driven by Playwright against a live `speech7 serve`.

Every card is exercised the way a person uses it: type a key, click, read what the page shows. The realtime
card gets its microphone from Chromium's fake capture device, fed with the JFK recording. The demo account
uses Whisper tiny.en (its `sttApiKey`) to keep the run short on a small CPU. Layout (no horizontal scroll at
390 and 1280 px) and accessibility (axe-core: no serious or critical violation) are checked on every tab at
both sizes; screenshots land in test-artifacts/.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser_support import (
    AXE_JS,
    CHROMIUM,
    DESKTOP,
    PHONE,
    LiveServer,
    Tab,
    assert_no_horizontal_scroll,
    axe_audit,
    chromium_args,
    download,
    fake_mic_wav,
    focused,
    minutes_shown,
    open_tab,
    require,
    screenshot,
    serve,
    sweep_widths,
    use_key,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

JFK_PHRASE = re.compile(r"ask not what your country can do for you", re.IGNORECASE)
MODEL_WAIT_MS = 240_000  # first use loads Whisper/Piper on a small shared CPU; generous but bounded


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory, models_root: Path) -> Iterator[LiveServer]:
    require(CHROMIUM.is_file(), f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    with serve(tmp_path_factory.mktemp("server-data"), models_root) as server:
        yield server


@pytest.fixture(scope="module")
def browser(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory, testdata: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    mic = fake_mic_wav(tmp_path_factory.mktemp("mic") / "jfk-48k.wav", testdata)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(mic))
        yield b
        b.close()


@pytest.fixture
def tab(browser, live_server: LiveServer) -> Iterator[Tab]:
    """A fresh browser profile per test (empty localStorage, no cookies), console errors collected."""
    t = open_tab(browser, live_server, DESKTOP)
    yield t
    t.page.context.close()


@pytest.fixture
def phone(browser, live_server: LiveServer) -> Iterator[Tab]:
    t = open_tab(browser, live_server, PHONE)
    yield t
    t.page.context.close()


def test_home_page_offers_only_what_the_key_can_use(tab: Tab, live_server: LiveServer) -> None:
    from playwright.sync_api import expect

    page = tab.page
    resp = page.goto(live_server.url + "/")
    assert resp is not None and resp.status == 200
    csp = resp.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self' ws: wss:" in csp and "media-src 'self' blob:" in csp
    expect(page.locator("#key-source")).to_contain_text("API keys come from this server's administrator")
    page.fill("#api-key", live_server.user_key)
    page.keyboard.press("Enter")  # Enter submits the key form
    expect(page.locator("#minutes-remaining")).to_have_text("30")
    expect(page.locator("#tab-admin")).to_be_hidden()  # a user key gets no admin tools
    # The installed Whisper models, the account's own chosen, and nothing else; English-only ones say so.
    options = page.locator("#stt-model option").all_inner_texts()
    assert options == ["base — multilingual", "tiny.en — English only (default)"], options
    expect(page.locator("#stt-model")).to_have_value("tiny.en")
    expect(page.locator("#rt-model")).to_have_value("tiny.en")
    expect(page.locator("#card-stt .translate-option")).to_be_hidden()  # tiny.en cannot translate
    page.select_option("#stt-model", "base")
    expect(page.locator("#card-stt .translate-option")).to_be_visible()
    # No translation model serves a direction out of English here: no two-way pair is offered, and why.
    expect(page.locator("#rt-two-way")).to_be_hidden()
    expect(page.locator("#rt-two-way-note")).to_contain_text("English-only")
    page.select_option("#rt-model", "base")
    expect(page.locator("#rt-two-way-note")).to_contain_text("not available here")
    # The rule behind the offer: both directions served, Whisper serving anything into English.
    pairs = page.evaluate(
        """async () => (await import('/static/account.js')).twoWayPairs(
            [["en", "de"], ["zh", "en"], ["de", "fr"], ["fr", "de"], ["en", "fr"]], true)"""
    )
    assert pairs == [["en", "de"], ["en", "fr"], ["de", "fr"]], pairs
    assert page.evaluate("async () => (await import('/static/account.js')).twoWayPairs([['en', 'de']], false)") == []
    expect(page.locator("#speeches")).to_contain_text("No speeches yet")
    page.reload()  # the key survives a reload (localStorage)
    expect(page.locator("#minutes-remaining")).to_have_text("30")
    screenshot(page, "home.png", full_page=True)
    assert tab.errors == [], tab.errors  # CSP violations and script errors show up here


def test_api_errors_are_shown_in_words(tab: Tab, live_server: LiveServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = tab.page
    use_key(page, live_server, "not-a-real-key")
    expect(page.locator("#card-account .status")).to_contain_text("Invalid API key (HTTP 401")
    page.click("#tts-form button[type=submit]")
    expect(page.locator("#card-tts .status")).to_contain_text("Invalid API key")
    page.click("#rt-toggle")
    expect(page.locator("#card-realtime .status")).to_contain_text(re.compile("invalid API key", re.IGNORECASE), timeout=30_000)
    expect(page.locator("#rt-toggle")).to_have_text("Start microphone")  # ready for another try

    use_key(page, live_server)  # with a good key, a file that is not media gets the server's reason
    junk = tmp_path / "broken.wav"
    junk.write_bytes(b"RIFF this is not really a wave file" * 40)
    page.set_input_files("#stt-file", str(junk))
    page.click("#stt-form button[type=submit]")
    status = page.locator("#card-stt .status")
    expect(status).to_contain_text("Error:", timeout=60_000)
    expect(status).to_contain_text("HTTP 422")
    assert len(status.inner_text()) > len("Error: (HTTP 422)") + 10  # a reason in words, not just a code
    expect(page.locator("#stt-result")).to_be_hidden()
    expect(page.locator("#card-stt .progress-line")).to_be_hidden()


def test_tts_card_plays_audio_says_what_it_cost_and_records_the_speech(tab: Tab, live_server: LiveServer) -> None:
    from playwright.sync_api import expect

    page = tab.page
    use_key(page, live_server)
    before = minutes_shown(page)
    page.fill("#tts-text", "The quick brown fox jumps over the lazy dog. Then it runs into the forest.")
    page.focus("#tts-form button[type=submit]")
    page.keyboard.press("Enter")
    expect(page.locator("#tts-form button[type=submit]")).to_have_attribute("aria-busy", "true")
    page.wait_for_function(
        "() => { const a = document.getElementById('tts-audio'); return a.ended || a.currentTime > 0.3; }", timeout=MODEL_WAIT_MS,
    )
    status = page.locator("#card-tts .status")
    expect(status).to_contain_text(re.compile(r"Spoken\. Cost: 0\.5 min for \d+\.\d s of speech \(billed per request, rounded up"), timeout=MODEL_WAIT_MS)
    expect(page.locator("#minutes-remaining")).to_have_text(str(before - 0.5).rstrip("0").rstrip("."))
    assert focused(page) == "Speak"  # focus stayed on the button that started it
    first = page.locator("#speeches li").first
    expect(first).to_contain_text("The quick brown fox")
    assert int(page.evaluate("document.getElementById('tts-audio').duration")) >= 2
    name, _ = download(page, first.get_by_role("button", name=re.compile("Download .*quick brown fox.* as MP3")))
    assert name.endswith(".mp3")
    assert tab.errors == [], tab.errors


def test_stt_on_a_phone_shows_the_transcript_once_with_its_cost_and_exports(phone: Tab, live_server: LiveServer, testdata: Path) -> None:
    from playwright.sync_api import expect

    page = phone.page
    use_key(page, live_server)
    before = minutes_shown(page)
    page.set_input_files("#stt-file", str(testdata / "en" / "jfk.flac"))
    page.click("#stt-form button[type=submit]")
    result = page.locator("#stt-result")
    expect(result).to_contain_text(JFK_PHRASE, timeout=MODEL_WAIT_MS)
    assert len(JFK_PHRASE.findall(result.inner_text())) == 1  # shown once, not as text and again as a segment
    expect(page.locator("#stt-meta")).to_contain_text("language en")
    expect(page.locator("#stt-cost")).to_have_text(
        "Cost: 0.5 min for 11.0 s of audio (billed per request, rounded up to the next 0.5 minute)."
    )
    expect(page.locator("#card-stt .progress-text")).to_contain_text(re.compile(r"Uploaded and transcribed in \d+\.\d s"))
    assert page.locator("#card-stt progress").evaluate("p => p.value") == 1
    expect(page.locator("#minutes-remaining")).to_have_text(str(before - 0.5).rstrip("0").rstrip("."))
    assert focused(page) == "Transcribe"
    # The time column stays on one line at phone width.
    heights = page.locator("#stt-segments .time").evaluate_all("els => els.map((e) => e.getClientRects().length)")
    assert heights and set(heights) == {1}, heights
    assert_no_horizontal_scroll(page, "STT result at 390 px")
    axe_audit(page, "demo tab with a transcript, 390 px")
    screenshot(page, "stt-390.png", full_page=True)

    page.get_by_role("button", name="Copy transcript").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert JFK_PHRASE.search(copied), copied
    name, txt = download(page, page.get_by_role("button", name="Download transcript as TXT"))
    assert name == "jfk.txt" and txt.strip() == copied.strip()
    name, srt = download(page, page.get_by_role("button", name="Download transcript as SRT"))
    assert name == "jfk.srt" and re.match(r"1\n00:00:0\d,\d{3} --> 00:00:\d\d,\d{3}\n", srt), srt
    name, raw = download(page, page.get_by_role("button", name="Download transcript as JSON"))
    body = json.loads(raw)
    assert name == "jfk.json" and body["minutesUsed"] == 0.5 and JFK_PHRASE.search(body["text"])
    # The result is kept in this browser: after a reload it is listed and shows again.
    page.reload()
    item = page.locator("#results-history li", has_text="jfk.flac")
    item.get_by_role("button", name="Show transcript of jfk.flac").click()
    expect(page.locator("#stt-result")).to_contain_text(JFK_PHRASE)
    assert phone.errors == [], phone.errors


def test_subtitles_play_with_the_file_and_cues_seek(tab: Tab, live_server: LiveServer, testdata: Path) -> None:
    from playwright.sync_api import expect

    page = tab.page
    use_key(page, live_server)
    page.set_input_files("#sub-file", str(testdata / "en" / "jfk.flac"))
    page.click("#sub-form button[type=submit]")
    expect(page.locator("#card-subtitle .status")).to_contain_text("Subtitles ready", timeout=MODEL_WAIT_MS)
    expect(page.locator("#sub-cost")).to_have_text("Cost: 0.5 min for 11.0 s of audio (billed per request, rounded up to the next 0.5 minute).")
    name, srt = download(page, page.locator("#sub-download"))
    assert name == "jfk.srt" and re.search(r"^1\r?\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}", srt, re.MULTILINE), srt
    # The upload plays with its subtitles as a WebVTT track; choosing a cue seeks there.
    cues = page.wait_for_function(
        "() => { const m = document.querySelector('#sub-player audio'); const c = m && m.textTracks[0].cues;"
        " return c && c.length && m.readyState >= 1 ? c.length : 0; }", timeout=30_000,
    ).json_value()
    buttons = page.locator("#sub-cues button.cue")
    assert buttons.count() == cues >= 2
    start_ms = int(buttons.nth(1).get_attribute("data-start") or 0)
    buttons.nth(1).click()
    page.wait_for_function(f"() => document.querySelector('#sub-player audio').currentTime * 1000 >= {start_ms - 50}")
    expect(buttons.nth(1)).to_have_attribute("aria-current", "true", timeout=10_000)
    axe_audit(page, "demo tab with subtitles, 1280 px")
    screenshot(page.locator("#card-subtitle"), "subtitle-card.png")
    assert tab.errors == [], tab.errors


def test_subtitle_job_shows_real_progress_and_what_it_cost(tab: Tab, live_server: LiveServer, testdata: Path) -> None:
    from playwright.sync_api import expect

    page = tab.page
    use_key(page, live_server)
    page.set_input_files("#sub-file", str(testdata / "en" / "jfk.flac"))
    page.check("#sub-async")
    page.click("#sub-form button[type=submit]")
    expect(page.locator("#card-subtitle .status")).to_contain_text("Subtitles ready", timeout=MODEL_WAIT_MS)
    expect(page.locator("#card-subtitle .progress-text")).to_contain_text(re.compile(r"Subtitles made in \d+\.\d s"))
    assert page.locator("#card-subtitle progress").evaluate("p => p.value") == 1  # stays full, not hidden
    expect(page.locator("#sub-meta")).to_contain_text("11.0 s")
    expect(page.locator("#sub-cost")).to_contain_text("Cost: 0.5 min for 11.0 s of audio")
    expect(page.locator("#sub-cues")).to_contain_text(re.compile("country", re.IGNORECASE))


def test_realtime_card_transcribes_without_the_key_in_the_url(tab: Tab, live_server: LiveServer) -> None:
    from playwright.sync_api import expect

    page = tab.page
    sockets: list[Any] = []
    first_frames: list[str] = []
    page.on("websocket", lambda ws: (sockets.append(ws), ws.on("framesent", lambda f: first_frames.append(f) if not first_frames else None)))
    use_key(page, live_server)
    before = minutes_shown(page)
    page.click("#rt-toggle")
    expect(page.locator("#rt-toggle")).to_have_text("Stop", timeout=30_000)
    assert focused(page) == "rt-toggle"
    expect(page.locator("#rt-transcript")).to_contain_text(re.compile("country", re.IGNORECASE), timeout=MODEL_WAIT_MS)
    # Only final words reach the screen reader's live region.
    expect(page.locator("#rt-announce")).not_to_be_empty()
    page.click("#rt-toggle")
    expect(page.locator("#card-realtime .status")).to_contain_text("Finished.", timeout=60_000)
    assert focused(page) == "rt-toggle"
    assert [ws.url for ws in sockets] == [live_server.url.replace("http", "ws") + "/stt/realtime"]
    assert live_server.user_key not in sockets[0].url
    config = json.loads(first_frames[0] if isinstance(first_frames[0], str) else first_frames[0]["payload"])
    assert config["apiKey"] == live_server.user_key and config["model"] == "tiny.en"
    # Billing: the account card refreshed after the session, and the card says what it cost.
    expect(page.locator("#rt-cost")).to_contain_text(re.compile(r"Cost: \d+(\.5)? min for \d+\.\d s of streamed audio"))
    assert minutes_shown(page) < before
    # Words joined into sentences, each sentence capitalized; no line per pause.
    text = page.locator("#rt-transcript").inner_text()
    assert page.locator("#rt-transcript p").count() == 1, text
    assert not re.search(r"[.?!]\s+[a-z]", text), text
    assert page.locator("#rt-announce").inner_text() in text
    name, txt = download(page, page.get_by_role("button", name="Download live transcript as TXT"))
    assert name == "live-transcript.txt" and txt.strip() == text.strip()
    _, srt = download(page, page.get_by_role("button", name="Download live transcript as SRT"))
    assert re.match(r"1\n00:00:\d\d,\d{3} --> ", srt) and re.search("country", srt, re.IGNORECASE), srt
    screenshot(page.locator("#card-realtime"), "realtime-card.png")
    assert tab.errors == [], tab.errors


def test_admin_tools_confirm_destructive_actions(tab: Tab, live_server: LiveServer) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto(live_server.url + "/#admin")
    page.fill("#admin-key", live_server.user_key)
    page.keyboard.press("Enter")
    expect(page.locator("#admin-login .status")).to_contain_text("Only admin API keys")
    use_key(page, live_server, live_server.admin_key)  # an admin key in the key bar: the tab and a shortcut
    expect(page.locator("#tab-admin")).to_be_visible()
    page.click("#tab-admin")
    page.click("#admin-use-key")
    expect(page.locator("#admin-console")).to_be_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "s7_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.fill("#ca-start", "12.5")
    page.fill("#ca-company", "Created In Browser d.o.o.")
    page.fill("#ca-contact", "Ana Admin")
    page.keyboard.press("Enter")
    key_box = page.locator("#new-key-value")
    expect(key_box).to_be_visible()
    new_key = key_box.inner_text().strip()
    caps = httpx.get(f"{live_server.url}/account/capabilities", headers={"x-api-key": new_key}, timeout=30)
    assert caps.status_code == 200 and caps.json()["minutesRemaining"] == 12.5

    row = page.locator("#accounts-table tr", has_text="Created In Browser d.o.o.")
    row.get_by_placeholder("± min").fill("7.5")
    row.get_by_placeholder("± min").press("Enter")  # Enter in the row's box adds
    expect(page.locator("#card-accounts .status")).to_contain_text("now has 20 minutes")
    expect(row).to_contain_text("20 min")
    expect(page.locator("#accounts-table")).not_to_contain_text(" of ")  # a balance, not "20 of 12.5"
    # Deducting asks first; declining changes nothing.
    row.get_by_placeholder("± min").fill("-5")
    page.once("dialog", lambda d: d.dismiss())
    row.get_by_role("button", name="Add minutes to Created In Browser d.o.o.").click()
    page.once("dialog", lambda d: (d.message.startswith("Deduct 5 minutes") or pytest.fail(d.message), d.accept()))
    row.get_by_role("button", name="Add minutes to Created In Browser d.o.o.").click()
    expect(page.locator("#card-accounts .status")).to_contain_text("now has 15 minutes")
    row.get_by_role("button", name="Usage of Created In Browser d.o.o.").click()
    rows = page.locator("#usage-table tbody tr")
    for i, words in enumerate([("Deduction", "−5"), ("Grant", "+7.5"), ("Grant", "opening balance", "+12.5")]):
        for w in words:
            expect(rows.nth(i)).to_contain_text(w)
    # Disabling and a new key ask first too.
    page.once("dialog", lambda d: d.dismiss())
    row.get_by_role("button", name="Disable Created In Browser d.o.o.").click()
    expect(row).to_contain_text("active")
    page.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="New key for Created In Browser d.o.o.").click()
    rotated = page.locator("#card-accounts .status code.rotated-key")
    expect(rotated).to_be_visible()
    newer_key = rotated.inner_text().strip()
    assert httpx.get(f"{live_server.url}/account/capabilities", headers={"x-api-key": new_key}, timeout=30).status_code == 401
    page.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="Disable Created In Browser d.o.o.").click()
    expect(row).to_contain_text("disabled")
    assert focused(page) == "Enable"  # focus is back on the (now Enable) button of that row
    assert httpx.get(f"{live_server.url}/account/capabilities", headers={"x-api-key": newer_key}, timeout=30).status_code == 403

    page.click("#admin-logout")
    expect(page.locator("#admin-login-card")).to_be_visible()
    page.reload()
    expect(page.locator("#admin-console")).to_be_hidden()
    assert httpx.get(f"{live_server.url}/accounts", cookies={"s7_admin": cookie["value"]}, timeout=30).status_code == 401
    # Only the expected refusals (the user key's 403, the signed-out session's 401) reach the console.
    assert all(re.search(r"status of 40[13]", e) for e in tab.errors), tab.errors


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["390x844", "1280x800"])
def test_every_tab_fits_and_passes_axe(browser, live_server: LiveServer, size: dict) -> None:
    """Demo and Admin (signed out and signed in, usage open) at phone and desktop width: no horizontal scroll,
    no serious or critical axe-core violation; the desktop demo is audited in the dark scheme as well."""
    require(AXE_JS.is_file(), f"axe-core not found at {AXE_JS} (scripts/test installs it with npm)")
    schemes = ["light", "dark"] if size is DESKTOP else ["light"]
    for scheme in schemes:
        t = open_tab(browser, live_server, size, scheme)
        page = t.page
        try:
            use_key(page, live_server, live_server.admin_key)
            page.wait_for_selector("#tab-admin:not([hidden])")
            where = f"{size['width']} px, {scheme}"
            assert_no_horizontal_scroll(page, f"demo, {where}")
            axe_audit(page, f"demo tab, {where}")
            screenshot(page, f"demo-{size['width']}-{scheme}.png", full_page=True)
            if scheme == "dark":
                continue
            if size is PHONE:  # the other ends of the supported range, and the widths where layouts switch
                sweep_widths(page, (360, 720, 1000, 1001, 1440), "demo", back_to=size)
            page.click("#tab-admin")
            page.wait_for_selector("#admin-login-card:not([hidden])")
            axe_audit(page, f"admin sign-in, {where}")
            page.click("#admin-use-key")
            page.wait_for_selector("#accounts-table tbody tr")
            page.locator("#accounts-table tr", has_text="Browser Co").get_by_role("button", name="Usage of Browser Co").click()
            page.wait_for_selector("#usage-panel:not([hidden])")
            assert_no_horizontal_scroll(page, f"admin, {where}")
            if size is PHONE:
                sweep_widths(page, (360, 720, 1100, 1101, 1440), "admin", back_to=size)
            axe_audit(page, f"admin console, {where}")
            screenshot(page, f"admin-{size['width']}.png", full_page=True)
            # The one expected refusal: the admin tab's check for a session before signing in.
            assert all("status of 401" in e for e in t.errors), t.errors
        finally:
            page.context.close()
