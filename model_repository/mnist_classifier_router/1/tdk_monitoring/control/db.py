"""The one database layer: SQLite (a file) by default, PostgreSQL when the URL says so.

Generic on purpose (the version registry and the prediction log both sit on it): a connection, numbered
migrations per namespace (applied once, recorded in `schema_migrations`), and a few typed helpers.
SQL is written once with `?` placeholders, `{serial_pk}` for an auto-increment key and `{blob}` for
bytes; the layer adapts them to the backend.

    sqlite:///relative/or/absolute/path.db   (or a plain path)
    postgresql://user@host:port/dbname
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from build_tools.errors import DatabaseError

logger = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///build/lifecycle/registry.db"

_DIALECT_MACROS = {
    "sqlite": {"serial_pk": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB"},
    "postgresql": {"serial_pk": "BIGSERIAL PRIMARY KEY", "blob": "BYTEA"},
}


@dataclass(frozen=True)
class Migration:
    """One schema step of a namespace; `statements` run in order inside one transaction."""

    version: int
    statements: tuple[str, ...]


def _redact(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}@{host}"


class Database:
    """A connection to one database. Thread-safe: calls are serialized on one connection."""

    def __init__(self, url: str = DEFAULT_URL) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._depth = 0
        if url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            try:
                import psycopg
            except ImportError as e:  # pragma: no cover - psycopg is a project dependency
                raise DatabaseError("PostgreSQL URLs need the psycopg package (pip install 'psycopg[binary]')") from e
            try:
                # client_encoding: a database created without a UTF-8 locale (SQL_ASCII, e.g. initdb in a
                # minimal container) would otherwise hand text columns back as bytes.
                self._conn: Any = psycopg.connect(url, autocommit=True, connect_timeout=10, client_encoding="utf8")
            except psycopg.Error as e:
                raise DatabaseError(f"cannot connect to {_redact(url)}: {str(e).strip()}") from e
            self._errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        else:
            self.dialect = "sqlite"
            path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
            if url.startswith(("sqlite://", "mysql://")) and not url.startswith("sqlite:///"):
                raise DatabaseError(f"database URL {url!r}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            try:
                # isolation_level=None: we issue BEGIN/COMMIT ourselves, the same way on both backends.
                self._conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
                self._conn.row_factory = sqlite3.Row
                # WAL: readers (the CLI's `versions`) never block the writer (a rollout or the watcher).
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as e:
                raise DatabaseError(f"cannot open SQLite database {path}: {e}") from e
            self._errors = (sqlite3.Error,)
        logger.debug("connected to %s (%s)", _redact(url), self.dialect)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- SQL -------------------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        for macro, value in _DIALECT_MACROS[self.dialect].items():
            sql = sql.replace("{" + macro + "}", value)
        # Placeholders: `?` everywhere in our SQL; psycopg wants %s (and a literal % doubled).
        return sql.replace("%", "%%").replace("?", "%s") if self.dialect == "postgresql" else sql

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            if self.dialect == "sqlite":
                return self._conn.execute(self._sql(sql), tuple(params))
            cur = self._conn.cursor()
            cur.execute(self._sql(sql), tuple(params))
            return cur
        except self._errors as e:
            raise DatabaseError(f"{self.dialect}: {str(e).strip()} (in: {' '.join(sql.split())[:120]})") from e

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        with self._lock:
            cur = self._run(sql, params)
            return int(cur.rowcount or 0)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run one statement for every parameter row (one driver call: no per-row Python work)."""
        if not rows:
            return 0
        with self._lock:
            try:
                if self.dialect == "sqlite":
                    self._conn.executemany(self._sql(sql), [tuple(r) for r in rows])
                else:
                    with self._conn.cursor() as cur:
                        cur.executemany(self._sql(sql), [tuple(r) for r in rows])
            except self._errors as e:
                raise DatabaseError(
                    f"{self.dialect}: {str(e).strip()} (in: {' '.join(sql.split())[:120]})"
                ) from e
            return len(rows)

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run an INSERT into a table with a `{serial_pk}` id column; returns the new id."""
        with self._lock:
            if self.dialect == "postgresql":
                row = self._run(sql.rstrip().rstrip(";") + " RETURNING id", params).fetchone()
                return int(row[0])
            return int(self._run(sql, params).lastrowid)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._run(sql, params)
            if self.dialect == "sqlite":
                return [dict(r) for r in cur.fetchall()]
            names = [d.name for d in cur.description or []]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """All statements inside commit together or not at all (nested blocks join the outer one)."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                # IMMEDIATE: take SQLite's write lock now, so two writers never both read then write.
                self._run("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._depth -= 1
                if outer:
                    with contextlib.suppress(*self._errors, DatabaseError):
                        self._run("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._run("COMMIT")

    # -- schema ----------------------------------------------------------------------------------
    def migrate(self, namespace: str, migrations: Sequence[Migration]) -> list[int]:
        """Apply the namespace's migrations not applied yet, in order; returns the versions applied."""
        self._run(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " namespace TEXT NOT NULL, version INTEGER NOT NULL, applied_at TEXT NOT NULL,"
            " PRIMARY KEY (namespace, version))"
        )
        applied: list[int] = []
        for m in sorted(migrations, key=lambda m: m.version):
            with self.transaction():
                done = self.query_one(
                    "SELECT version FROM schema_migrations WHERE namespace = ? AND version = ?", (namespace, m.version)
                )
                if done:
                    continue
                for statement in m.statements:
                    self._run(statement)
                self._run(
                    "INSERT INTO schema_migrations (namespace, version, applied_at) VALUES (?, ?, ?)",
                    (namespace, m.version, utc_now()),
                )
                applied.append(m.version)
        if applied:
            logger.info("%s: applied %s migration(s) %s", _redact(self.url), namespace, applied)
        return applied


def utc_now() -> str:
    """Timestamps are ISO-8601 UTC text on both backends (sortable, readable in a table)."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def connect(url: str | None = None) -> Database:
    return Database(url or DEFAULT_URL)
