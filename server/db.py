"""Database schema and engine. SQLAlchemy Core over an async driver, so the same code runs on the
embedded SQLite default (aiosqlite) and on PostgreSQL (`postgresql+asyncpg://...`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = MetaData()

# Account profile columns and their lengths. The API validates each field against the same number
# (server/accounts.py), so a value it accepts always fits: PostgreSQL enforces VARCHAR lengths, SQLite does not.
PROFILE_COLUMNS: dict[str, int] = {
    "company_id": 200,
    "company_name": 300,
    "contact_name": 300,
    "contact_phone": 100,
    "company_address": 500,
    "company_vat_id": 100,
    "company_registration_number": 100,
    "date_added_company": 20,
    "time_added_company": 20,
}

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_prefix", String(16), nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("minutes", Float, nullable=False, default=0.0),
    Column("starting_minutes", Float, nullable=False, default=0.0),
    # The spec's sttApiKey / ttsApiKey as server/engine_specs.py stores them: an engine spec, "off",
    # "provider-key:" + a masked foreign key, or NULL (the server default).
    Column("stt_engine", String(200)),
    Column("tts_engine", String(200)),
    *(Column(name, String(length)) for name, length in PROFILE_COLUMNS.items()),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Every change of a balance is a row here: reservations become settled or refunded.
usage = Table(
    "usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("kind", String(20), nullable=False),  # stt | tts | subtitle | subtitle_job | realtime | credit
    Column("status", String(12), nullable=False),  # reserved | settled | refunded | credit
    Column("minutes", Float, nullable=False),  # reserved amount while reserved, then the final charge
    Column("audio_seconds", Float, nullable=False, default=0.0),
    Column("reference", String(80)),
    Column("note", Text),
    Column("created_at", Float, nullable=False),
    Column("settled_at", Float),
    Column("owner", String(80)),  # the server process holding a reservation (server_processes.id)
)
Index("ix_usage_account", usage.c.account_id, usage.c.created_at)
Index("ix_usage_status", usage.c.status)  # crash recovery looks up the few rows still reserved

# One row per running server process, heartbeated (server.leases): a reservation whose owner stopped
# heartbeating belongs to a process that died, and is refunded by the next one to look.
server_processes = Table(
    "server_processes",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)

speeches = Table(
    "speeches",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("text", Text, nullable=False),
    Column("characters", Integer, nullable=False),
    Column("words", Integer, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("minutes_used", Float, nullable=False),
    Column("engine", String(200), nullable=False),
    Column("file_name", String(80), nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)
Index("ix_speeches_account", speeches.c.account_id, speeches.c.created_at)

subtitle_jobs = Table(
    "subtitle_jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("status", String(12), nullable=False),  # queued | processing | completed | failed
    Column("progress", Float, nullable=False, default=0.0),
    Column("error", Text),
    Column("options", Text, nullable=False),  # JSON
    Column("upload_name", String(300)),
    Column("upload_file", String(80), nullable=False),
    Column("result_file", String(80)),
    Column("minutes_used", Float),
    Column("duration_ms", Integer),
    Column("usage_id", Integer),
    Column("worker_id", String(80)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("heartbeat_at", Float),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("completed_at", Float),
    Column("expires_at", Float, nullable=False),
)
Index("ix_jobs_status", subtitle_jobs.c.status, subtitle_jobs.c.created_at)

# Blob storage in the database (server/storage/database.py), for a cluster whose nodes share no disk: one row
# per write, its bytes in `blob_chunks` rows of about 1 MB inserted as they arrive. `name` is NULL while the
# write is in progress and set when it completes, so a reader never sees half an object.
blobs = Table(
    "blobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), unique=True),  # e.g. speeches/sp_....mp3, jobs/sub_....media
    Column("size", BigInteger, nullable=False, default=0),
    Column("chunks", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    # When the last chunk was written: an unfinished write this old has lost its writer (an orphan).
    Column("updated_at", Float, nullable=False),
)
Index("ix_blobs_updated", blobs.c.updated_at)

blob_chunks = Table(
    "blob_chunks",
    metadata,
    Column("blob_id", String(40), ForeignKey("blobs.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
)
# Media and MP3 do not compress: PostgreSQL should store the chunks out of line without trying.
event.listen(
    blob_chunks, "after_create",
    DDL("ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL").execute_if(dialect="postgresql"),
)


def make_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            # WAL lets readers proceed during a write; the busy timeout serialises writers instead of failing.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True)


# Any constant shared by every node: the key of the PostgreSQL advisory lock held while a node starts.
STARTUP_LOCK_KEY = 0x5337_0001


@contextlib.asynccontextmanager
async def startup_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """Serialises the first-start work (creating tables, the admin account) of nodes that start at the same
    time on one PostgreSQL database; without it two CREATE TABLEs or two admin accounts race. A no-op
    elsewhere (SQLite is one node)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": STARTUP_LOCK_KEY})
        await conn.commit()  # the lock belongs to the session, not to this transaction
        try:
            yield
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": STARTUP_LOCK_KEY})
            await conn.commit()


async def create_schema(engine: AsyncEngine) -> None:
    async with startup_lock(engine), engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.run_sync(_upgrade_in_place)


def _upgrade_in_place(conn: Connection) -> None:
    """A database made by an older version gets the nullable columns and the indexes added since (create_all
    only creates missing tables): ALTER TABLE ... ADD COLUMN, which SQLite and PostgreSQL both do in place."""
    inspector = inspect(conn)
    quote = conn.dialect.identifier_preparer.quote
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(f"the database lacks {table.name}.{column.name}, which cannot be added in place")
            kind = column.type.compile(dialect=conn.dialect)
            # PostgreSQL: two processes upgrading at once must not fail on the column the other one added.
            guard = "IF NOT EXISTS " if conn.dialect.name == "postgresql" else ""
            conn.execute(text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {guard}{quote(column.name)} {kind}"))
        for index in table.indexes:
            index.create(conn, checkfirst=True)


class DatabaseCorruptError(RuntimeError):
    """The SQLite file failed its integrity check: serving from it would lose or invent balances."""


async def check_database(engine: AsyncEngine) -> None:
    """SQLite: `PRAGMA quick_check` before anything reads the file (O(size), about a second per GB), and a
    refusal to start with a message an operator can act on. PostgreSQL checks its own pages."""
    if engine.dialect.name != "sqlite":
        return
    path = engine.url.database or ":memory:"
    try:
        async with engine.connect() as conn:
            problems = [str(r[0]) for r in (await conn.exec_driver_sql("PRAGMA quick_check")).all()]
    except DBAPIError as exc:  # "file is not a database", "database disk image is malformed", ...
        problems = [str(exc.orig)]
    if problems != ["ok"]:
        shown = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        raise DatabaseCorruptError(
            f"the SQLite database {path} is damaged ({shown}). The server will not start on it: restore it from "
            "a backup, or salvage it with `sqlite3 speech7.db .recover | sqlite3 recovered.db` and point "
            "S7_DATABASE_URL (or S7_DATA_DIR) at the result."
        )
