"""A throwaway PostgreSQL cluster for tests: initdb into a temp dir, serve on a free localhost port, remove it.

The Debian packages put the server binaries in /usr/lib/postgresql/<version>/bin (not on PATH). PostgreSQL
refuses to run as root, so when the tests run as root (containers, CI) initdb and the server run as the
`postgres` system user. Without the binaries the tests that need them skip, unless S7_REQUIRE_ALL is set
(CI installs PostgreSQL and wants a failure, not a silent skip).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.launcher import free_port


def find_bin_dir() -> Path | None:
    preferred = Path("/usr/lib/postgresql/15/bin")
    if (preferred / "initdb").is_file():
        return preferred
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parent.parent.name)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def require_bin_dir() -> Path:
    d = find_bin_dir()
    if d is None:
        msg = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("S7_REQUIRE_ALL"):
            pytest.fail(msg)
        pytest.skip(msg)
    return d


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


class PgCluster:
    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.port = port
        self._n = 0

    def create_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy asyncpg URL."""
        self._n += 1
        name = f"t{self._n}_{os.getpid()}"
        subprocess.run(
            [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
            check=True, capture_output=True, timeout=60,
        )
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"


@contextlib.contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    bin_dir = require_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="s7pg_"))
    data, sock, logfile = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    run = lambda cmd: subprocess.run(_as_server_user(cmd), check=True, capture_output=True, timeout=120)  # noqa: E731
    try:
        run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
        # fsync off and a short checkpoint: a test database is thrown away, durability costs only time here.
        opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-o", opts, "-w", "-t", "60", "start"])
        deadline = time.monotonic() + 30
        while subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
        ).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not become ready: " + logfile.read_text(errors="replace")[-2000:])
            time.sleep(0.1)
        yield PgCluster(bin_dir, root, port)
    except subprocess.CalledProcessError as exc:
        log = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
        raise RuntimeError(f"{exc.cmd[-1]} failed: {exc.stderr.decode(errors='replace')}\n{log}") from None
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True, timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)
