"""Several nodes behind a real load balancer: HAProxy (Debian's package) in front of three `speech7 serve`
processes on loopback ports, one PostgreSQL database, no shared disk (each node has its own data directory;
stored files live in the database's blob store). Through the balancer: a speech made on one node downloads
from the others, a subtitle job uploaded to one node runs on another and its SRT comes back from the first,
a realtime WebSocket session works, and a node SIGKILLed mid-job has its job finished by another node once
the lease expires, with the books exact (balance = credits - settled charges, nothing left reserved).

Node n1 runs no job workers (S7_JOB_WORKERS=0: an API node), n2 and n3 one each, so "processed elsewhere" is
certain, not likely. Requests are pinned to a node with the balancer's `x-s7-node` header (a test-only rule of
server/balancer.py); HAProxy's `X-Served-By` says which node answered. Whisper tiny.en, short clips.

Also here, on in-process apps: nodes starting at once on an empty database, and the purge run by two nodes
at once (each expired job and its files deleted exactly once).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from engines.wer import wer
from server.balancer import PIN_HEADER, Balancer, Checks, Node, haproxy_binary, running_haproxy
from server.db import blobs
from server.db import subtitle_jobs as jobs_t
from server.launcher import ServerProcess, start_process
from tests.conftest import ADMIN_KEY
from tests.pg import PgCluster, pg_cluster
from tests.realtime_helpers import Server, assert_finished, frames, load, run_session, s16
from tests.test_subtitle_api import check_cues, parse_subtitles, words_of

pytestmark = pytest.mark.slow
TIMEOUT_S = 180.0
ADMIN = {"x-api-key": ADMIN_KEY}


def require_haproxy() -> None:
    if haproxy_binary() is None:
        msg = "haproxy not found (apt-get install haproxy)"
        if os.environ.get("S7_REQUIRE_ALL"):
            pytest.fail(msg)
        pytest.skip(msg)


@dataclass
class Cluster:
    lb: Balancer
    nodes: dict[str, ServerProcess]
    data_dirs: dict[str, Path]
    db_url: str

    def pin(self, name: str) -> dict[str, str]:
        return {PIN_HEADER: name}

    def node_of_worker(self, worker_id: str) -> str:
        """Which node a job worker id (host:pid:token) belongs to."""
        pid = int(worker_id.split(":")[1])
        return next(name for name, proc in self.nodes.items() if proc.proc.pid == pid)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgCluster]:
    with pg_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, models_root: Path, postgres: PgCluster) -> Iterator[Cluster]:
    require_haproxy()
    db_url = postgres.create_database()
    root = tmp_path_factory.mktemp("cluster")
    base = {
        "S7_DATABASE_URL": db_url, "S7_ADMIN_KEY": ADMIN_KEY, "S7_MODELS_DIR": str(models_root), "S7_DEVICE": "cpu",
        "S7_DEFAULT_STT": "whisper:tiny.en", "S7_CPU_THREADS": "1", "S7_FRONTEND_WORKERS": "1",
        "S7_JOB_STALE_SECONDS": "2", "S7_JOB_POLL_SECONDS": "0.1", "S7_LOG_LEVEL": "warning",
    }
    workers = {"n1": "0", "n2": "1", "n3": "1"}
    data_dirs = {name: root / name for name in workers}

    def start(name: str) -> ServerProcess:
        # Warm-up stays on: /healthz answers 503 until the node has loaded its models, as in production.
        env = {**base, "S7_DATA_DIR": str(data_dirs[name]), "S7_JOB_WORKERS": workers[name]}
        return start_process(env, log=root / f"{name}.log")

    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(workers)) as pool:
        # All at once on the empty database, as a whole cluster coming up does.
        futures = {name: pool.submit(start, name) for name in workers}
        nodes = {}
        for name, future in futures.items():
            nodes[name] = future.result()
            stack.callback(nodes[name].stop)
        lb = stack.enter_context(running_haproxy(
            [Node(name, server.url.removeprefix("http://")) for name, server in nodes.items()],
            checks=Checks(interval_ms=200, fall=1, rise=1), pin_header=True,
        ))
        yield Cluster(lb, nodes, data_dirs, db_url)


def new_account(c: Cluster, minutes: float = 10) -> dict:
    r = httpx.post(f"{c.lb.url}/accounts", json={"apiKey": ADMIN_KEY, "startingMinutes": minutes,
                                                 "sttApiKey": "whisper:tiny.en"}, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()


def assert_books_balance(c: Cluster, account_id: str, charged: float) -> None:
    """Every reservation settled or refunded, and the balance is what the ledger says it must be."""
    rows = httpx.get(f"{c.lb.url}/accounts/{account_id}/usage", headers=ADMIN, timeout=30).json()["usage"]
    assert [u for u in rows if u["status"] == "reserved"] == []
    credits = -sum(u["minutes"] for u in rows if u["status"] == "credit")
    settled = sum(u["minutes"] for u in rows if u["status"] == "settled")
    assert settled == pytest.approx(charged)
    balance = httpx.get(f"{c.lb.url}/accounts/{account_id}", headers=ADMIN, timeout=30).json()["minutes"]
    assert balance == pytest.approx(credits - settled)


def wait_job(c: Cluster, key: str, job_id: str, states: set[str], node: str | None = None) -> dict:
    headers = {"x-api-key": key, **(c.pin(node) if node else {})}
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        r = httpx.get(f"{c.lb.url}/subtitle/jobs/{job_id}", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        if r.json()["status"] in states:
            return r.json()
        time.sleep(0.05)  # polling the job's status, as a client does
    pytest.fail(f"job {job_id} never reached {states}")


async def job_row(c: Cluster, job_id: str) -> dict:
    from server.db import make_engine

    db = make_engine(c.db_url)
    try:
        async with db.connect() as conn:
            return dict((await conn.execute(select(jobs_t).where(jobs_t.c.id == job_id))).mappings().one())
    finally:
        await db.dispose()


def submit(c: Cluster, key: str, clip: Path, node: str) -> dict:
    with open(clip, "rb") as fh:
        r = httpx.post(f"{c.lb.url}/subtitle/jobs", headers={"x-api-key": key, **c.pin(node)},
                       files={"audio": (clip.name, fh, "audio/wav")}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["x-served-by"] == node
    return r.json()


# ---------------------------------------------------------------------- through the balancer


def test_every_node_is_up_behind_the_balancer(cluster: Cluster) -> None:
    seen = set()
    for _ in range(6):  # unpinned requests are spread over the nodes
        r = httpx.get(f"{cluster.lb.url}/healthz", timeout=30)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        seen.add(r.headers["x-served-by"])
    assert cluster.lb.states() == {"n1": "UP", "n2": "UP", "n3": "UP"}
    assert seen <= {"n1", "n2", "n3"} and len(seen) >= 2
    # The three nodes started at once on an empty database: one admin account, not three.
    listed = httpx.get(f"{cluster.lb.url}/accounts", headers=ADMIN, timeout=30).json()["accounts"]
    assert [a["isAdmin"] for a in listed] == [True]


def test_speech_made_on_one_node_downloads_from_the_others(cluster: Cluster) -> None:
    acc = new_account(cluster)
    key = acc["apiKey"]
    with httpx.stream("POST", f"{cluster.lb.url}/tts", json={"apiKey": key, "text": "Hello from the first node."},
                      headers=cluster.pin("n1"), timeout=120) as r:
        assert r.status_code == 200 and r.headers["x-served-by"] == "n1"
        audio = r.read()
    speech_id = r.headers["x-speech-id"]
    assert len(audio) > 1000
    for node in ("n2", "n3", "n1"):
        d = httpx.get(f"{cluster.lb.url}/speeches/{speech_id}?download=1",
                      headers={"x-api-key": key, **cluster.pin(node)}, timeout=30)
        assert (d.status_code, d.headers["x-served-by"]) == (200, node)
        assert d.content == audio  # the same bytes, though the file was never on this node's disk
    listed = httpx.get(f"{cluster.lb.url}/speeches", headers={"x-api-key": key, **cluster.pin("n3")}, timeout=30)
    assert [s["id"] for s in listed.json()["speeches"]] == [speech_id]
    assert_books_balance(cluster, acc["id"], 0.5)


def test_job_uploaded_to_one_node_runs_on_another(cluster: Cluster, testdata: Path) -> None:
    acc = new_account(cluster)
    key = acc["apiKey"]
    job = submit(cluster, key, testdata / "video" / "nasa_13013.mp4", "n1")
    view = wait_job(cluster, key, job["id"], {"completed", "failed"}, node="n2")
    assert view["status"] == "completed", view
    worker = cluster.node_of_worker(asyncio.run(job_row(cluster, job["id"]))["worker_id"])
    assert worker in {"n2", "n3"}  # n1 has no job workers: another node fetched the upload from the database
    r = httpx.get(f"{cluster.lb.url}{view['downloadUrl']}", headers={"x-api-key": key, **cluster.pin("n1")}, timeout=30)
    assert (r.status_code, r.headers["x-served-by"]) == (200, "n1")
    cues = parse_subtitles(r.text)
    check_cues(cues, 70, 2)
    assert "telescope" in words_of(cues)
    # Nothing of it on any node's disk: no job files, no scratch copy left on the worker.
    for data_dir in cluster.data_dirs.values():
        assert not (data_dir / "jobs").exists()
        assert not list((data_dir / "tmp").rglob("blob_*"))  # tmp/<lease>/: each process has its own
    assert_books_balance(cluster, acc["id"], 0.5)


def test_realtime_session_through_the_balancer(cluster: Cluster, testdata: Path) -> None:
    acc = new_account(cluster)
    clip = testdata / "en" / "LJ001-0004.wav"  # 5 s
    session = run_session(Server(None, cluster.lb.url), acc["apiKey"],
                          {"audio_format": "pcm_s16le", "sample_rate": 16000, "num_channels": 1},
                          frames(s16(load(clip)), 3200))  # 100 ms frames
    assert_finished(session)  # every message of the session came back over the one balanced connection
    assert wer(clip.with_suffix(".txt").read_text(), session.text()) < 0.25, session.text()
    assert_books_balance(cluster, acc["id"], 0.5)


def test_node_killed_mid_job_is_taken_over_by_another(cluster: Cluster, long_clip: Path) -> None:
    """Runs last: it kills a node. The balancer takes the dead node out and the job finishes elsewhere."""
    acc = new_account(cluster)
    key = acc["apiKey"]
    job = submit(cluster, key, long_clip, "n1")
    view = wait_job(cluster, key, job["id"], {"processing", "completed", "failed"})
    assert view["status"] == "processing", f"the job finished before the test could kill its node: {view}"
    victim = cluster.node_of_worker(asyncio.run(job_row(cluster, job["id"]))["worker_id"])
    survivor = ({"n2", "n3"} - {victim}).pop()
    cluster.nodes[victim].kill()  # SIGKILL: no shutdown, no hand-back; its heartbeat just stops
    cluster.lb.wait_states({victim: "DOWN"}, timeout_s=30)

    view = wait_job(cluster, key, job["id"], {"completed", "failed"})
    assert view["status"] == "completed", view
    row = asyncio.run(job_row(cluster, job["id"]))
    assert row["attempts"] == 2 and cluster.node_of_worker(row["worker_id"]) == survivor
    r = httpx.get(f"{cluster.lb.url}{view['downloadUrl']}", headers={"x-api-key": key, **cluster.pin("n1")}, timeout=30)
    assert r.status_code == 200, r.text
    check_cues(parse_subtitles(r.text), 70, 2)
    # The reservation taken at upload was settled once, by the survivor; nothing else was charged.
    usage = httpx.get(f"{cluster.lb.url}/accounts/{acc['id']}/usage", headers=ADMIN, timeout=30).json()["usage"]
    assert [(u["status"], u["minutes"]) for u in usage if u["reference"] == job["id"]] == [("settled", 1.0)]
    assert_books_balance(cluster, acc["id"], 1.0)
    # Unpinned requests keep working: the balancer sends them to the nodes still alive.
    for _ in range(4):
        r = httpx.get(f"{cluster.lb.url}/subtitle/jobs/{job['id']}", headers={"x-api-key": key}, timeout=30)
        assert r.status_code == 200 and r.headers["x-served-by"] != victim


# ---------------------------------------------------------------------- in-process nodes on one database


async def test_two_nodes_purging_at_once_delete_each_job_and_its_files_once(
    tmp_path: Path, models_root: Path, testdata: Path, postgres: PgCluster
) -> None:
    from tests.test_subtitle_jobs import base_settings, running_app
    from tests.test_subtitle_jobs import submit as submit_job

    db_url = postgres.create_database()
    settings = {name: base_settings(tmp_path / name, models_root, database_url=db_url, job_workers=0)
                for name in ("a", "b")}
    async with running_app(settings["a"]) as a, running_app(settings["b"]) as b:
        acc = await a.account(sttApiKey="whisper:tiny.en")
        clip = testdata / "en" / "LJ001-0002.wav"
        ids = [(await submit_job((a, b)[i % 2].client, acc["apiKey"], clip))["id"] for i in range(8)]
        assert await a.minutes(acc["apiKey"]) == pytest.approx(6.0)  # 8 reservations of 0.5 min
        later = time.time() + 25 * 3600
        purged = await asyncio.gather(*(api.services.subtitle_jobs.purge(now=later) for api in (a, b, a, b)))
        assert sum(purged) == len(ids), purged  # four purges at once (two per node): each job deleted once
        assert await b.services.subtitle_jobs.purge(now=later) == 0
        async with a.services.db.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(jobs_t))).scalar_one() == 0
            assert (await conn.execute(select(func.count()).select_from(blobs))).scalar_one() == 0
        # Each expired job gave its reservation back exactly once.
        assert await b.minutes(acc["apiKey"]) == pytest.approx(10.0)
        usage = (await a.client.get(f"/accounts/{acc['id']}/usage", headers=ADMIN)).json()["usage"]
        assert sorted(u["status"] for u in usage if u["reference"] in ids) == ["refunded"] * len(ids)


def test_the_deploy_guide_shows_the_balancer_config_the_tests_run() -> None:
    from server.balancer import haproxy_config

    guide = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    nodes = [Node(f"gpu-0{i}", f"10.0.0.1{i}:8080") for i in (1, 2, 3)]
    assert f"```\n{haproxy_config(':80', nodes)}```" in guide


async def test_nodes_starting_at_once_on_an_empty_database_create_it_once(
    tmp_path: Path, postgres: PgCluster
) -> None:
    """A whole cluster coming up together: four nodes start on a new database at the same moment; the tables
    and the admin account are made once and every node serves."""
    from server.app import create_app
    from server.services import services_of
    from tests.fakes import fake_models, fake_settings

    db_url = postgres.create_database()
    apps = [create_app(fake_settings(tmp_path / f"n{i}", ADMIN_KEY).with_(database_url=db_url, warmup=False),
                       manager=fake_models()) for i in range(4)]
    async with contextlib.AsyncExitStack() as stack:
        await asyncio.gather(*(stack.enter_async_context(app.router.lifespan_context(app)) for app in apps))
        admins = [await services_of(app).accounts.authenticate(ADMIN_KEY) for app in apps]
        assert all(a is not None and a.is_admin for a in admins)
        assert len({a.id for a in admins if a is not None}) == 1
        async with services_of(apps[0]).db.connect() as conn:
            assert (await conn.exec_driver_sql("select count(*) from accounts")).scalar_one() == 1
