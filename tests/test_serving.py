"""How `speech7 serve` runs uvicorn (server/serving.py, issue 15): API keys never reach the logs, and a client
that sends its request headers slowly is disconnected, while requests and WebSockets that are on their way
are not. tests/test_serve_script.py checks the log of the real `scripts/serve` too."""

from __future__ import annotations

import http.client
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from uvicorn.logging import AccessFormatter, DefaultFormatter
from websockets.sync.client import connect

from server.serving import RedactSecrets, _h11_class, http_protocol, redact_secrets
from tests.conftest import ADMIN_KEY
from tests.fakes import fake_models, fake_settings

DEADLINE_S = 1.0


def test_keys_in_query_strings_are_redacted() -> None:
    assert redact_secrets("/stt?apiKey=s7_abc-DEF_1&x=1") == "/stt?apiKey=***&x=1"
    assert redact_secrets("/v1/x?a=1&api_key=zz&token=t0k;key=k") == "/v1/x?a=1&api_key=***&token=***;key=***"
    assert redact_secrets("/speeches/sp_1?download=1") == "/speeches/sp_1?download=1"


def test_keys_under_percent_encoded_or_misspelt_names_are_redacted() -> None:
    # Starlette decodes `%61piKey` to `apiKey` and authenticates with it: the log must not print that key, nor
    # one the client sent under a name the server does not read (`apiKey%3D=`, a stray query field).
    key = "s7_z7KtbvYyWbJcZZ0_FOadIqO0mhlFiVY-wf0-TxI39nc"
    for query in (f"/account?%61piKey={key}", f"/account?apiKey%3D={key}", f"/stt?q=s7%5F{key[3:]}&a=1"):
        redacted = redact_secrets(query)
        assert key not in redacted and key[3:] not in redacted, redacted
    assert redact_secrets(f"/account?%61piKey={key}&x=1") == "/account?%61piKey=***&x=1"


def test_uvicorn_s_access_and_websocket_lines_carry_no_key() -> None:
    key = "s7_secretsecretsecret"
    access = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", f"/account/capabilities?apiKey={key}", "1.1", 200), None)
    ws = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]',
                           (("127.0.0.1", 5000), f"/stt/realtime?apiKey={key}"), None)
    lines = []
    for record, formatter in ((access, AccessFormatter(use_colors=False)), (ws, DefaultFormatter(use_colors=False))):
        assert RedactSecrets().filter(record)
        lines.append(formatter.format(record))
    assert all(key not in line and "apiKey=***" in line for line in lines), lines
    assert '"GET /account/capabilities?apiKey=*** HTTP/1.1" 200' in lines[0]


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from server.app import create_app
    from server.launcher import serve_in_thread

    protocol = http_protocol(DEADLINE_S) if request.param == "httptools" else \
        type("H11", (_h11_class(),), {"header_timeout_s": DEADLINE_S})
    settings = fake_settings(tmp_path_factory.mktemp("serving"), ADMIN_KEY).with_(warmup=False)
    with serve_in_thread(create_app(settings, manager=fake_models()), options={"http": protocol}) as live:
        yield live.url


def _socket(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(65536):  # b"" once the server closed; a timeout (10 s) fails the test
        got += chunk
    return got


def test_slow_headers_are_cut_off(server: str) -> None:
    with _socket(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert _read_until_closed(sock) == b""
    with _socket(server) as sock:  # connected, silent
        assert _read_until_closed(sock) == b""


def test_keep_alive_requests_and_websockets_outlive_the_deadline(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    for _ in range(2):  # one connection, kept alive
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert response.status == 200 and response.read()
    assert conn.sock is not None
    conn.sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # the third request's headers never end
    assert _read_until_closed(conn.sock) == b""
    conn.close()
    key = httpx.post(f"{server}/accounts", json={"apiKey": ADMIN_KEY, "startingMinutes": 5},
                     timeout=30).json()["apiKey"]
    with connect(server.replace("http://", "ws://") + "/stt/realtime") as ws:
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1.5 * DEADLINE_S)  # the socket is still open past the header deadline ...
        ws.send(json.dumps({"apiKey": key, "audio_format": "pcm_s16le", "sample_rate": 16000}))
        ws.send(b"")
        assert json.loads(ws.recv(timeout=60))["finished"] is True  # ... and works


def test_the_cli_serves_with_these_options() -> None:
    from server.serving import uvicorn_options
    from server.settings import Settings

    options = uvicorn_options(Settings(header_timeout_s=7.0))
    assert options["http"].header_timeout_s == 7.0
    assert any("redact_secrets" in h.get("filters", []) for h in options["log_config"]["handlers"].values())
    assert Path(__file__).parents[1].joinpath("server", "cli.py").read_text().count("uvicorn_options(settings)") == 1


def test_the_web_page_never_puts_the_key_in_a_url() -> None:
    """The page sends the key as the x-api-key header (downloads too: fetch + blob) and, for realtime, in the
    first message; a URL with the key would land in proxy logs and the browser's history."""
    import re

    static = Path(__file__).parents[1] / "server" / "static"
    sources = {p.name: p.read_text() for p in sorted(static.glob("*.js")) + [static / "index.html"]}
    in_url = re.compile(r"""[?&]apiKey=|searchParams\.(set|append)\(\s*["']apiKey|apiKey=\$\{""")
    assert {name for name, text in sources.items() if in_url.search(text)} == set()
    api = sources["api.js"]
    assert 'h.set("x-api-key", getKey())' in api and 'xhr.setRequestHeader("x-api-key", getKey())' in api
    assert "request(path)" in sources["tts.js"]  # speech downloads: fetch with the header, then a blob URL


def test_websockets_are_served_without_permessage_deflate(tmp_path: Path) -> None:
    """A client that offers compression (browsers and `websockets` do by default) gets an uncompressed session:
    audio frames do not deflate, and inflating each one cost the server per live stream."""
    from server.app import create_app
    from server.launcher import serve_in_thread
    from server.serving import uvicorn_options

    settings = fake_settings(tmp_path, ADMIN_KEY).with_(warmup=False)
    options = {k: v for k, v in uvicorn_options(settings).items() if k not in ("host", "port", "log_config")}
    with serve_in_thread(create_app(settings, manager=fake_models()), options=options) as live:
        key = httpx.post(f"{live.url}/accounts", json={"apiKey": ADMIN_KEY, "startingMinutes": 5},
                         timeout=30).json()["apiKey"]
        with connect(live.ws_url + "/stt/realtime", compression="deflate") as ws:
            assert ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            ws.send(json.dumps({"apiKey": key, "audio_format": "pcm_s16le", "sample_rate": 16000}))
            ws.send(b"\x00\x00" * 1600)
            ws.send(b"")
            assert json.loads(ws.recv(timeout=60))["finished"] is True
