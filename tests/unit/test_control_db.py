"""The database layer and the version registry, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from build_tools.errors import DatabaseError, RolloutError
from control.db import Database, Migration
from control.registry import Registry


def test_migrate_applies_each_migration_once_when_run_twice(database_url: str) -> None:
    steps = [Migration(1, ("CREATE TABLE notes (id {serial_pk}, body TEXT NOT NULL)",)),
             Migration(2, ("ALTER TABLE notes ADD COLUMN tag TEXT",))]
    with Database(database_url) as db:
        assert db.migrate("notes", steps) == [1, 2]
        assert db.migrate("notes", steps) == []
        first = db.insert("INSERT INTO notes (body, tag) VALUES (?, ?)", ("a", "x"))
        second = db.insert("INSERT INTO notes (body, tag) VALUES (?, ?)", ("b", None))
        assert second > first
        assert [r["body"] for r in db.query("SELECT body FROM notes ORDER BY id")] == ["a", "b"]


def test_transaction_keeps_nothing_when_the_block_raises(database_url: str) -> None:
    with Database(database_url) as db:
        db.migrate("t", [Migration(1, ("CREATE TABLE t (k TEXT PRIMARY KEY)",))])
        with pytest.raises(RuntimeError), db.transaction():
            db.execute("INSERT INTO t (k) VALUES (?)", ("kept?",))
            raise RuntimeError("boom")
        assert db.query("SELECT k FROM t") == []


def test_database_error_names_the_statement_when_sql_is_bad(database_url: str) -> None:
    with Database(database_url) as db, pytest.raises(DatabaseError, match="no_such_table"):
        db.query("SELECT * FROM no_such_table")


def test_database_refuses_an_unknown_url_scheme_when_opened() -> None:
    with pytest.raises(DatabaseError, match="expected sqlite:///PATH or postgresql://"):
        Database("mysql://root@localhost/db")


def test_registry_records_state_changes_with_history_when_a_version_moves(database_url: str) -> None:
    with Database(database_url) as db:
        reg = Registry(db)
        reg.add("m", 1, "a" * 64, "v1.onnx", "first", "champion", {"accuracy": 0.98}, "test", 100.0)
        reg.add("m", 2, "b" * 64, "v2.onnx", "retrained", "staged", {"accuracy": 0.985}, "test")
        reg.set_state("m", 2, "canary", 10.0, "tester", "canary", "try it")
        reg.set_state("m", 1, "champion", 90.0, "tester", "canary", "try it")
        assert reg.weights("m") == {1: 90.0, 2: 10.0}
        assert reg.get("m", 2).gate == {"accuracy": 0.985}
        history = reg.history("m")
        assert [(h.version, h.action, h.from_state, h.to_state) for h in history] == [
            (1, "add", None, "champion"), (2, "add", None, "staged"),
            (2, "canary", "staged", "canary"), (1, "canary", "champion", "champion"),
        ]
        assert history[2].actor == "tester" and history[2].reason == "try it"
        assert history[2].details["traffic_percent"] == 10.0
        # A second Registry on the same database sees the same data and does not migrate again.
        assert Registry(db).champion("m").version == 1  # type: ignore[union-attr]


def test_registry_get_names_known_versions_when_version_is_missing(database_url: str) -> None:
    with Database(database_url) as db:
        reg = Registry(db)
        reg.add("m", 1, "a" * 64, "v1.onnx", "first", "champion", {}, "test", 100.0)
        with pytest.raises(RolloutError, match=r"version 7 is not in the registry; registered versions: \[1\]"):
            reg.get("m", 7)


def test_registry_rejects_a_duplicate_version_when_added_twice(database_url: str) -> None:
    with Database(database_url) as db:
        reg = Registry(db)
        reg.add("m", 1, "a" * 64, "v1.onnx", "first", "champion", {}, "test", 100.0)
        with pytest.raises(DatabaseError):
            reg.add("m", 1, "c" * 64, "again.onnx", "dup", "staged", {}, "test")
        assert len(reg.history("m")) == 1  # the failed add left no history row


def test_registry_serializes_writers_when_threads_share_one_database(database_url: str) -> None:
    with Database(database_url) as db:
        reg = Registry(db)
        reg.add("m", 1, "a" * 64, "v1.onnx", "first", "champion", {}, "test", 100.0)

        def note(i: int) -> None:
            for j in range(10):
                reg.note("m", 1, f"thread{i}", "note", f"n{j}")

        threads = [threading.Thread(target=note, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(reg.history("m")) == 41


def test_registry_reads_text_as_str_when_the_postgresql_database_is_sql_ascii(postgres_url: str) -> None:
    """A database made without a UTF-8 locale (a minimal container's initdb) is SQL_ASCII; psycopg would
    return its text columns as bytes, and the registry would never find its champion."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS ascii_registry")
        conn.execute(
            "CREATE DATABASE ascii_registry ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        )
    try:
        with Database(postgres_url.rsplit("/", 1)[0] + "/ascii_registry") as db:
            reg = Registry(db)
            reg.add("m", 1, "a" * 64, "v1.onnx", "first", "champion", {}, "test", 100.0)
            champion = reg.champion("m")
            assert champion is not None and champion.state == "champion" and isinstance(champion.model, str)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS ascii_registry WITH (FORCE)")
