"""The version registry: every version of a model, its gate results, its state and traffic share, and a
history of every change (who or what, when, why). Stored through `control.db` (SQLite or PostgreSQL).

States: staged (loaded, no traffic), canary (a share of traffic), champion (the rest), retired (was
champion or was dropped without fault), rejected (failed lint, the gate or its load; never takes traffic).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from build_tools.errors import RolloutError
from control.db import Database, Migration, utc_now

logger = logging.getLogger(__name__)

State = Literal["staged", "canary", "champion", "retired", "rejected"]
STATES: tuple[State, ...] = ("staged", "canary", "champion", "retired", "rejected")
# States whose version is loaded on the server.
LOADED_STATES: tuple[State, ...] = ("staged", "canary", "champion")

MIGRATIONS = (
    Migration(
        1,
        (
            "CREATE TABLE model_versions ("
            " model TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL, source TEXT NOT NULL,"
            " added_at TEXT NOT NULL, reason TEXT NOT NULL, state TEXT NOT NULL,"
            " traffic_percent DOUBLE PRECISION NOT NULL DEFAULT 0, gate TEXT NOT NULL DEFAULT '{}',"
            " updated_at TEXT NOT NULL, PRIMARY KEY (model, version))",
            "CREATE TABLE version_history ("
            " id {serial_pk}, model TEXT NOT NULL, version INTEGER, at TEXT NOT NULL, actor TEXT NOT NULL,"
            " action TEXT NOT NULL, from_state TEXT, to_state TEXT, reason TEXT NOT NULL,"
            " details TEXT NOT NULL DEFAULT '{}')",
            "CREATE INDEX version_history_model ON version_history (model, id)",
        ),
    ),
)


@dataclass(frozen=True)
class VersionRecord:
    model: str
    version: int
    sha256: str
    source: str
    added_at: str
    reason: str
    state: State
    traffic_percent: float
    gate: dict[str, Any]
    updated_at: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> VersionRecord:
        return cls(
            model=row["model"], version=int(row["version"]), sha256=row["sha256"], source=row["source"],
            added_at=row["added_at"], reason=row["reason"], state=row["state"],
            traffic_percent=float(row["traffic_percent"]), gate=json.loads(row["gate"] or "{}"),
            updated_at=row["updated_at"],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "state": self.state,
            "traffic_percent": self.traffic_percent, "sha256": self.sha256, "source": self.source,
            "added_at": self.added_at, "reason": self.reason, "gate": self.gate, "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    model: str
    version: int | None
    at: str
    actor: str
    action: str
    from_state: str | None
    to_state: str | None
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Typed access to the registry tables; every state change writes a history row in the same transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("registry", MIGRATIONS)

    def versions(self, model: str | None = None) -> list[VersionRecord]:
        if model is None:
            rows = self.db.query("SELECT * FROM model_versions ORDER BY model, version")
        else:
            rows = self.db.query("SELECT * FROM model_versions WHERE model = ? ORDER BY version", (model,))
        return [VersionRecord.from_row(r) for r in rows]

    def get(self, model: str, version: int) -> VersionRecord:
        row = self.db.query_one("SELECT * FROM model_versions WHERE model = ? AND version = ?", (model, version))
        if row is None:
            known = [v.version for v in self.versions(model)]
            raise RolloutError(f"{model} version {version} is not in the registry; registered versions: {known}")
        return VersionRecord.from_row(row)

    def find(self, model: str, state: State) -> list[VersionRecord]:
        return [v for v in self.versions(model) if v.state == state]

    def champion(self, model: str) -> VersionRecord | None:
        found = self.find(model, "champion")
        return found[0] if found else None

    def add(
        self, model: str, version: int, sha256: str, source: str, reason: str, state: State,
        gate: dict[str, Any], actor: str, traffic_percent: float = 0.0,
    ) -> VersionRecord:
        now = utc_now()
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO model_versions (model, version, sha256, source, added_at, reason, state,"
                " traffic_percent, gate, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (model, version, sha256, source, now, reason, state, traffic_percent, json.dumps(gate), now),
            )
            self._history(model, version, actor, "add", None, state, reason, {"sha256": sha256, "gate": gate})
        return self.get(model, version)

    def set_state(
        self, model: str, version: int, state: State, traffic_percent: float, actor: str, action: str,
        reason: str, details: dict[str, Any] | None = None,
    ) -> None:
        with self.db.transaction():
            before = self.get(model, version)
            self.db.execute(
                "UPDATE model_versions SET state = ?, traffic_percent = ?, updated_at = ?"
                " WHERE model = ? AND version = ?",
                (state, traffic_percent, utc_now(), model, version),
            )
            self._history(model, version, actor, action, before.state, state, reason,
                          {"traffic_percent": traffic_percent, **(details or {})})

    def note(self, model: str, version: int | None, actor: str, action: str, reason: str,
             details: dict[str, Any] | None = None) -> None:
        """A history entry without a state change (e.g. a refused step, a watcher verdict)."""
        self._history(model, version, actor, action, None, None, reason, details or {})

    def _history(self, model: str, version: int | None, actor: str, action: str, from_state: str | None,
                 to_state: str | None, reason: str, details: dict[str, Any]) -> None:
        self.db.insert(
            "INSERT INTO version_history (model, version, at, actor, action, from_state, to_state, reason, details)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (model, version, utc_now(), actor, action, from_state, to_state, reason, json.dumps(details)),
        )

    def history(self, model: str | None = None) -> list[HistoryEntry]:
        if model is None:
            rows = self.db.query("SELECT * FROM version_history ORDER BY id")
        else:
            rows = self.db.query("SELECT * FROM version_history WHERE model = ? ORDER BY id", (model,))
        return [
            HistoryEntry(
                id=int(r["id"]), model=r["model"], version=None if r["version"] is None else int(r["version"]),
                at=r["at"], actor=r["actor"], action=r["action"], from_state=r["from_state"],
                to_state=r["to_state"], reason=r["reason"], details=json.loads(r["details"] or "{}"),
            )
            for r in rows
        ]

    def weights(self, model: str) -> dict[int, float]:
        """Traffic share per version, as the router should have it (versions with a share only)."""
        return {v.version: v.traffic_percent for v in self.versions(model) if v.traffic_percent > 0}
