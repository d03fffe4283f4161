"""What the browser tests share: a live `speech7 serve` in a subprocess, Chromium with a fake microphone, and
the page-level checks (axe-core accessibility audit, no horizontal scroll, screenshots as test artifacts)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# scripts/test installs it there from the npm registry (`npm install --prefix .cache/npm axe-core@...`).
AXE_JS = Path(os.environ.get("S7_AXE_JS", REPO / ".cache" / "npm" / "node_modules" / "axe-core" / "axe.min.js"))
ADMIN_KEY = "s7-browser-test-admin-key-0123456789"
SERVER_START_TIMEOUT_S = 180
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


def require(ok: bool, reason: str) -> None:
    """A missing browser-test tool skips locally and fails CI (S7_REQUIRE_ALL=1)."""
    if ok:
        return
    if os.environ.get("S7_REQUIRE_ALL") == "1":
        pytest.fail(reason + " and S7_REQUIRE_ALL=1")
    pytest.skip(reason)


@dataclass(frozen=True)
class LiveServer:
    url: str
    admin_key: str
    user_key: str
    log: Path


@contextmanager
def serve(data: Path, models_root: Path) -> Iterator[LiveServer]:
    """`speech7 serve` on a free port with a fresh data dir, and a user account on Whisper tiny.en."""
    from server.launcher import running_process

    log = data / "server.log"
    env = {
        "S7_DATA_DIR": str(data), "S7_ADMIN_KEY": ADMIN_KEY, "S7_MODELS_DIR": str(models_root), "HF_HUB_OFFLINE": "1",
        "S7_JOB_POLL_SECONDS": "0.2",
    }
    with running_process(env, log=log, timeout_s=SERVER_START_TIMEOUT_S) as server:
        r = httpx.post(
            f"{server.url}/accounts", headers={"x-api-key": ADMIN_KEY}, timeout=30,
            json={"startingMinutes": 30, "companyName": "Browser Co", "contactName": "Tess Tester", "sttApiKey": "whisper:tiny.en"},
        )
        assert r.status_code == 201, r.text
        yield LiveServer(server.url, ADMIN_KEY, r.json()["apiKey"], log)


def fake_mic_wav(path: Path, testdata: Path) -> Path:
    """jfk.flac as 48 kHz 16-bit mono WAV (what Chromium's fake capture device reads), with a second of silence
    after it so the looping device leaves a pause for endpoint detection."""
    import soundfile as sf
    from scipy.signal import resample_poly

    audio, rate = sf.read(testdata / "en" / "jfk.flac", dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != 48000:
        mono = resample_poly(mono, 48000, rate).astype(np.float32)
    sf.write(path, np.concatenate([mono, np.zeros(48000, dtype=np.float32)]), 48000, subtype="PCM_16")
    return path


def chromium_args(mic_wav: Path) -> list[str]:
    return [
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={mic_wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]


# ---------------------------------------------------------------- pages and what they show


@dataclass
class Tab:
    page: Any  # playwright.sync_api.Page, imported lazily so collection works without Playwright
    errors: list[str]


def open_tab(browser: Any, server: LiveServer, viewport: dict, color_scheme: str = "light") -> Tab:
    context = browser.new_context(viewport=viewport, color_scheme=color_scheme)
    context.grant_permissions(["microphone", "clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return Tab(page, errors)


def use_key(page: Any, server: LiveServer, key: str | None = None) -> None:
    from playwright.sync_api import expect

    page.goto(server.url + "/")
    page.fill("#api-key", key or server.user_key)
    page.click("#key-form button[type=submit]")
    if key is None:
        expect(page.locator("#minutes-remaining")).not_to_have_text("–")


def minutes_shown(page: Any) -> float:
    return float(page.locator("#minutes-remaining").inner_text())


def download(page: Any, locator: Any) -> tuple[str, str]:
    with page.expect_download() as info:
        locator.click()
    return info.value.suggested_filename, Path(info.value.path()).read_bytes().decode("utf-8", "replace")


def focused(page: Any) -> str:
    return page.evaluate("document.activeElement && (document.activeElement.id || document.activeElement.textContent)")


# ---------------------------------------------------------------- page checks


def axe_audit(page: Any, where: str) -> None:
    """Runs axe-core in the page (through DevTools evaluation, which the page's CSP does not govern) and fails
    on any serious or critical violation, naming the rule and the offending elements. Without axe-core this
    audit fails under S7_REQUIRE_ALL=1 and is left out (with a warning) elsewhere, so the card tests still run."""
    if not AXE_JS.is_file() and os.environ.get("S7_REQUIRE_ALL") != "1":
        warnings.warn(f"axe-core not found at {AXE_JS}: accessibility audit of {where} left out", stacklevel=2)
        return
    require(AXE_JS.is_file(), f"axe-core not found at {AXE_JS} (scripts/test installs it with npm)")
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(AXE_JS.read_text(encoding="utf-8"))
    violations = page.evaluate(
        """async () => {
            const r = await axe.run(document, { resultTypes: ["violations"] });
            return r.violations.filter((v) => v.impact === "serious" || v.impact === "critical").map((v) => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ") + ": " + n.failureSummary),
            }));
        }"""
    )
    assert violations == [], f"accessibility violations ({where}):\n" + json.dumps(violations, indent=1)


def assert_no_horizontal_scroll(page: Any, where: str) -> None:
    """Neither the page nor a table's scroll box is wider than what the viewport shows."""
    widths = page.evaluate(
        """() => ({
            doc: document.documentElement.scrollWidth, body: document.body.scrollWidth, view: window.innerWidth,
            tables: [...document.querySelectorAll('.table-wrap')].filter((w) => w.offsetParent)
                .map((w) => w.scrollWidth - w.clientWidth),
        })"""
    )
    assert widths["doc"] <= widths["view"] and widths["body"] <= widths["view"], (where, widths)
    assert all(extra <= 1 for extra in widths["tables"]), (where, widths)


def sweep_widths(page: Any, widths: tuple[int, ...], where: str, back_to: dict) -> None:
    for width in widths:
        page.set_viewport_size({"width": width, "height": 800})
        assert_no_horizontal_scroll(page, f"{where}, {width} px")
    page.set_viewport_size(back_to)


def screenshot(target: Any, name: str, **kwargs: Any) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    target.screenshot(path=str(path), **kwargs)
    return path
