"""GET /metrics and GET /healthz after real work: what an operator's Prometheus and load balancer read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.slow


def _value(text: str, pattern: str) -> float:
    m = re.search(rf"^{pattern} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert m, f"{pattern} not in metrics:\n{text}"
    return float(m.group(1))


async def test_metrics_and_health_report_the_work_done(api, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    before = (await api.client.get("/healthz")).json()
    assert before["status"] == "ok"
    assert "tiny.en" in before["installedModels"]["whisper"]
    assert not any(k.startswith("whisper:") for k in before["loadedModels"])

    acct = await api.account(sttApiKey="whisper:tiny.en")
    with open(testdata / "en" / "jfk.flac", "rb") as f:
        r = await api.client.post(
            "/stt", headers={"x-api-key": acct["apiKey"]}, files={"audio": ("jfk.flac", f, "audio/flac")}
        )
    assert r.status_code == 200, r.text
    await api.client.get("/account/capabilities", headers={"x-api-key": "wrong"})

    text = (await api.client.get("/metrics", headers={"x-api-key": ADMIN_KEY})).text
    assert _value(text, r's7_requests_total\{method="POST",route="/stt",status="200"\}') == 1
    assert _value(text, r's7_requests_total\{method="GET",route="/account/capabilities",status="401"\}') == 1
    assert _value(text, r's7_request_seconds_count\{method="POST",route="/stt"\}') == 1
    assert 10.5 < _value(text, r's7_audio_seconds_total\{kind="stt"\}') < 11.5  # jfk.flac is 11.0 s
    # the Whisper batch worker's counters: at least one batched generate ran, nothing waits, nothing failed
    assert _value(text, r's7_batch_batches\{model="whisper:tiny.en[^"]*"\}') >= 1
    assert _value(text, r's7_batch_queue_depth\{model="whisper:tiny.en[^"]*"\}') == 0
    assert _value(text, r's7_batch_failed_batches\{model="whisper:tiny.en[^"]*"\}') == 0

    after = (await api.client.get("/healthz")).json()
    assert any(k.startswith("whisper:tiny.en") for k in after["loadedModels"])
