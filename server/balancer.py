"""HAProxy in front of speech7 nodes: the configuration a cluster runs with (docs/deploy.md shows it), and a
running balancer for tests and benchmarks, started, watched and stopped in one place.

The configuration's choices, each for a reason:
- `balance leastconn`: requests differ by orders of magnitude (a 2 s TTS sentence, a 2 h transcription, a
  realtime session); the node with the fewest open requests gets the next one.
- `option httpchk GET /healthz`: a node answers 503 until it has warmed its models, so it gets traffic only
  once it can serve; a dead node is out after `fall` failed checks.
- WebSockets: HAProxy passes the upgrade through and the connection stays on its node for its lifetime;
  `timeout tunnel` bounds an idle session instead of `timeout client/server`.
- `retries` + `option redispatch`: a request whose connection a dead node refused goes to another node (only
  connection failures are retried, so a POST is never sent twice).
- `X-Served-By`: which node answered, for operators (and for the tests).

Stdlib only, like server/launcher.py.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from server.launcher import free_port, stop_process

PIN_HEADER = "x-s7-node"  # tests only: a request carrying it goes to the named node (see `pin_header`)


@dataclass(frozen=True)
class Node:
    name: str  # a label for the logs and X-Served-By: n1, gpu-01, ...
    address: str  # host:port the node's server listens on


@dataclass(frozen=True)
class Checks:
    """Health checks: every `interval_ms` GET /healthz; `fall` failures take a node out, `rise` passes put it
    back (a starting node answers 503 until warm, so it joins after its warm-up)."""

    interval_ms: int = 2000
    fall: int = 3
    rise: int = 2


def haproxy_config(
    bind: str, nodes: Sequence[Node], *, checks: Checks = Checks(), stats_socket: Path | None = None,
    pin_header: bool = False,
) -> str:
    """The HAProxy configuration for these nodes. `pin_header` adds a rule (for tests) that sends a request
    with `x-s7-node: <name>` to that node, so a test can say "made on node A, fetched from node B"."""
    lines = ["global", "    maxconn 4096"]
    if stats_socket is not None:
        lines.append(f"    stats socket {stats_socket} mode 600 level admin")
    lines += [
        "",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        "    timeout client 10m        # a slow client uploading 200 MB",
        "    timeout server 10m        # POST /stt answers when the transcription is done",
        "    timeout tunnel 2h         # a realtime WebSocket, once upgraded",
        "    timeout http-request 30s  # the request line and headers",
        "    option redispatch",
        "    retries 2",
        "",
        "frontend speech7",
        f"    bind {bind}",
        "    default_backend nodes",
        "",
        "backend nodes",
        "    balance leastconn",
        "    option httpchk GET /healthz",
        "    http-check expect status 200",
        "    http-response set-header X-Served-By %s",
        f"    default-server inter {checks.interval_ms}ms fall {checks.fall} rise {checks.rise}",
    ]
    if pin_header:
        lines += [f"    use-server {n.name} if {{ req.hdr({PIN_HEADER}) -m str {n.name} }}" for n in nodes]
    lines += [f"    server {n.name} {n.address} check" for n in nodes]
    return "\n".join(lines) + "\n"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).is_file()), None
    )


class Balancer:
    """A running HAProxy: its URL and the states of its nodes (through the admin socket)."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, socket_path: Path, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.ws_url = url.replace("http://", "ws://", 1)
        self._socket = socket_path
        self._log = log

    def command(self, line: str) -> str:
        """One command on HAProxy's runtime API (e.g. `show stat`, `disable server nodes/n1`)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self._socket))
            s.sendall(line.encode() + b"\n")
            out = bytearray()
            while chunk := s.recv(65536):
                out += chunk
        return out.decode(errors="replace")

    def states(self) -> dict[str, str]:
        """Node name -> UP, DOWN, ... (with transitions such as "UP 1/2"), or INI before its first check
        (HAProxy counts a node UP until a check says otherwise)."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            r["svname"]: r["status"] if r["check_status"] not in {"", "INI"} else "INI"
            for r in rows if r["pxname"] == "nodes" and r["svname"] != "BACKEND"
        }

    def wait_states(self, expected: Mapping[str, str], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.states()
            if all(now.get(name) == state for name, state in expected.items()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"HAProxy nodes are {now}, not {dict(expected)}\n{self.log_tail()}")
            time.sleep(0.1)  # polling the balancer's own view of its health checks

    def log_tail(self, chars: int = 3000) -> str:
        return self._log.read_text(errors="replace")[-chars:] if self._log.is_file() else ""

    def stop(self) -> None:
        stop_process(self.proc)


@contextlib.contextmanager
def running_haproxy(nodes: Sequence[Node], *, checks: Checks = Checks(), pin_header: bool = False,
                    timeout_s: float = 60.0) -> Iterator[Balancer]:
    """HAProxy on a free localhost port in front of `nodes`; returns once every node is UP."""
    binary = haproxy_binary()
    if binary is None:
        raise FileNotFoundError("haproxy not found (apt-get install haproxy)")
    with tempfile.TemporaryDirectory(prefix="s7lb_") as tmp:
        root = Path(tmp)
        port = free_port()
        config = root / "haproxy.cfg"
        config.write_text(haproxy_config(f"127.0.0.1:{port}", nodes, checks=checks, stats_socket=root / "admin.sock",
                                         pin_header=pin_header))
        subprocess.run([binary, "-c", "-q", "-f", str(config)], check=True, capture_output=True, timeout=30)
        log = root / "haproxy.log"
        with log.open("wb") as out:  # -db: stay in the foreground, so stopping the process stops HAProxy
            proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT)
        balancer = Balancer(proc, f"http://127.0.0.1:{port}", root / "admin.sock", log)
        try:
            deadline = time.monotonic() + timeout_s
            while not (root / "admin.sock").exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"HAProxy did not start\n{balancer.log_tail()}")
                time.sleep(0.05)  # HAProxy creates its socket once it runs
            balancer.wait_states({n.name: "UP" for n in nodes}, max(1.0, deadline - time.monotonic()))
            yield balancer
        finally:
            balancer.stop()
