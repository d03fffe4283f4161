"""`scripts/serve` as a new user runs it: a subprocess, then only the HTTP API."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scripts_serve_runs_the_api(tmp_path, models_root):
    port = free_port()
    env = {
        **os.environ,
        "S7_PORT": str(port), "S7_HOST": "127.0.0.1", "S7_DATA_DIR": str(tmp_path / "data"),
        "S7_ADMIN_KEY": "serve-test-admin-key", "S7_MODELS_DIR": str(models_root),
    }
    proc = subprocess.Popen([str(REPO / "scripts" / "serve")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # a first run may install; later runs start in seconds
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("scripts/serve did not come up")
        r = httpx.post(f"{url}/accounts", json={"apiKey": "serve-test-admin-key", "startingMinutes": 30,
                                                "companyName": "Test Co", "contactName": "Jane"})
        assert r.status_code == 201
        key = r.json()["apiKey"]
        caps = httpx.get(f"{url}/account/capabilities", headers={"x-api-key": key}).json()
        assert caps["minutesRemaining"] == 30 and caps["stt"]["configured"] and caps["tts"]["configured"]
        r = httpx.post(f"{url}/tts", json={"apiKey": key, "text": "Hello world from the API."}, timeout=120)
        assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg" and len(r.content) > 1000
        assert (tmp_path / "data" / "speech7.db").is_file()  # SQLite under S7_DATA_DIR by default
        metrics = httpx.get(f"{url}/metrics").text
        assert 's7_requests_total{method="POST",route="/tts",status="200"} 1' in metrics
        health = httpx.get(f"{url}/healthz").json()
        assert health["device"] == "cpu" and "piper:en_US-joe-medium" in health["loadedModels"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
