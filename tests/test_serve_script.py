"""`scripts/serve` as a new user runs it: a subprocess, then only the HTTP API."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from server.launcher import REPO, running_process


@pytest.mark.slow
def test_scripts_serve_runs_the_api(tmp_path: Path, models_root: Path) -> None:
    env = {"S7_DATA_DIR": str(tmp_path / "data"), "S7_ADMIN_KEY": "serve-test-admin-key", "S7_MODELS_DIR": str(models_root)}
    # A first run may install; later runs start in seconds.
    with running_process(env, command=[str(REPO / "scripts" / "serve")], log=tmp_path / "serve.log", timeout_s=600) as srv:
        url = srv.url
        r = httpx.post(f"{url}/accounts", json={"apiKey": "serve-test-admin-key", "startingMinutes": 30,
                                                "companyName": "Test Co", "contactName": "Jane"})
        assert r.status_code == 201
        key = r.json()["apiKey"]
        caps = httpx.get(f"{url}/account/capabilities", headers={"x-api-key": key}).json()
        assert caps["minutesRemaining"] == 30 and caps["stt"]["configured"] and caps["tts"]["configured"]
        r = httpx.post(f"{url}/tts", json={"apiKey": key, "text": "Hello world from the API."}, timeout=120)
        assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg" and len(r.content) > 1000
        assert (tmp_path / "data" / "speech7.db").is_file()  # SQLite under S7_DATA_DIR by default
        assert httpx.get(f"{url}/metrics").status_code == 401  # admin key or S7_METRICS_TOKEN only
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer serve-test-admin-key"}).text
        assert 's7_requests_total{method="POST",route="/tts",status="200"} 1' in metrics
        health = httpx.get(f"{url}/healthz").json()
        assert health["device"] == "cpu" and "piper:en_US-joe-medium" in health["loadedModels"]
        # The spec allows ?apiKey=: the access log must not keep it (issue 15).
        assert httpx.get(f"{url}/account/capabilities", params={"apiKey": key}).status_code == 200
    log = (tmp_path / "serve.log").read_text(errors="replace")  # complete once the server has stopped
    assert '"GET /account/capabilities?apiKey=*** HTTP/1.1" 200' in log
    assert key not in log and "serve-test-admin-key" not in log


def test_serve_help_prints_usage_instead_of_serving() -> None:
    import subprocess
    import sys

    for argv in (["serve", "--help"], ["--help"], ["serve", "-h"]):
        done = subprocess.run([sys.executable, "-m", "server.cli", *argv], cwd=REPO, capture_output=True, text=True,
                              timeout=60)  # a server that started instead would be killed here and fail the test
        assert done.returncode == 0 and "S7_PORT" in done.stdout, (argv, done.stdout, done.stderr)
