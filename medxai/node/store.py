"""The node's durable state under WORKDIR: received instances on disk, and ``node.sqlite``.

Layout (every name is made of hashes and fixed words; nothing from a received header becomes a
path)::

    WORKDIR/
      node.sqlite                 instances, studies, outbox, events (WAL, synchronous=FULL)
      tmp/                        instances being written (removed at start)
      studies/<study key>/
        instances/<instance key>.dcm   the received instances, byte for byte as sent
        results/                  a ``medxai batch`` output folder (manifest.sqlite, ...)

Tables:

- ``instances``: one row per received SOP instance (the file exists before the row is committed;
  the row is committed before the C-STORE success status goes back).
- ``studies``: ``receiving`` -> ``queued`` (no new instance for the quiet period) ->
  ``processing`` -> ``processed`` | ``failed``; a new instance re-opens a study (``receiving``).
- ``outbox``: one row per (result SOP instance, destination): ``pending`` -> ``sent`` |
  ``failed``, with attempts, the time of the next try and the last error.
- ``events``: what happened, newest last (for ``medxai listen --status``).

One :class:`NodeStore` per process; its methods are safe to call from several threads.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medxai.errors import InputError, ProcessingError
from medxai.io.atomic import atomic_path

__all__ = [
    "DB_NAME",
    "OUTBOX_STATES",
    "STUDY_STATES",
    "NodeStore",
    "instance_key",
    "is_valid_uid",
    "study_key",
    "write_durable",
]

DB_NAME = "node.sqlite"
SCHEMA_VERSION = 1
STUDY_STATES = ("receiving", "queued", "processing", "processed", "failed")
OUTBOX_STATES = ("pending", "sent", "failed")

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT,
    study_key TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT,
    calling_ae TEXT,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_key);
CREATE TABLE IF NOT EXISTS studies (
    key TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    first_received_at REAL,
    last_received_at REAL,
    n_instances INTEGER NOT NULL DEFAULT 0,
    calling_ae TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    summary TEXT,
    processed_at REAL,
    updated_at REAL
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_key TEXT NOT NULL,
    path TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL,
    sent_at REAL,
    UNIQUE (sop_instance_uid, destination)
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t REAL NOT NULL,
    event TEXT NOT NULL,
    data TEXT
);
"""


def _h(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


def study_key(study_uid: str) -> str:
    """The folder name of a study: a hash of its Study Instance UID (never the UID itself)."""
    return "st_" + _h(study_uid, 20)


def instance_key(sop_uid: str) -> str:
    """The file stem of an instance: a hash of its SOP Instance UID."""
    return "in_" + _h(sop_uid, 32)


def is_valid_uid(uid: str) -> bool:
    """Whether ``uid`` is a DICOM UID: digits and dots, at most 64 characters."""
    return 0 < len(uid) <= 64 and bool(_UID.match(uid))


class _Refused(Exception):
    """Aborts a :func:`write_durable` whose check found a problem (nothing is stored)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def write_durable(
    data: bytes, dest: Path, tmp_dir: Path, check: Callable[[Path], str | None] | None = None
) -> str | None:
    """Write ``data`` to ``dest`` atomically and durably with :func:`medxai.io.atomic.atomic_path`:
    a temporary file (mode 0600) in ``tmp_dir`` (same file system; :meth:`NodeStore.clean_tmp`
    empties it on start), fsync'd, renamed over ``dest``, and the folder fsync'd. A reader (or a
    crash) sees either the old file or the whole new one.

    ``check(temporary path)`` may look at the file first: when it returns a problem, nothing is
    stored and the problem is returned. Returns None when the file was stored.

    Raises:
        OSError: the file cannot be written (disk full, no permission); nothing is stored.
    """
    try:
        with atomic_path(dest, durable=True, tmp_dir=tmp_dir, mode=0o600) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(data)
            problem = check(tmp) if check is not None else None
            if problem:
                raise _Refused(problem)
    except _Refused as refused:
        return refused.problem
    except ProcessingError as exc:
        # atomic_path says which file in a ProcessingError; the node answers an OSError with
        # "out of resources" and its strerror
        if isinstance(exc.__cause__, OSError):
            raise exc.__cause__ from None
        raise
    return None


class NodeStore:
    """The node's state in ``workdir`` (created if missing).

    Raises:
        InputError: ``workdir`` is not usable (not a folder, damaged database, newer schema).
    """

    def __init__(self, workdir: str | Path) -> None:
        self.workdir = Path(workdir).expanduser().resolve()
        if self.workdir.exists() and not self.workdir.is_dir():
            raise InputError(
                "is not a folder",
                path=self.workdir,
                hint="give -o a folder for the node's received studies and results",
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = self.workdir / "tmp"
        self.tmp_dir.mkdir(exist_ok=True)
        (self.workdir / "studies").mkdir(exist_ok=True)
        self._lock = threading.RLock()
        path = self.workdir / DB_NAME
        try:
            self.conn = sqlite3.connect(
                str(path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed row survives a power cut, not only a process kill
            self.conn.execute("PRAGMA synchronous=FULL")
            self._create_schema(path)
        except sqlite3.DatabaseError as exc:
            raise InputError(
                f"is not a usable medxai node database ({exc})",
                path=path,
                hint="use a new WORKDIR (-o)",
            ) from exc

    def _create_schema(self, path: Path) -> None:
        """Create the tables (if missing) and record the schema version; refuse a newer one."""
        with self.transaction() as c:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            row = c.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise InputError(
                    f"node database schema {row[0]} is newer than this medxai "
                    f"understands ({SCHEMA_VERSION})",
                    path=path,
                    hint="upgrade medxai, or use a new WORKDIR",
                )

    # -- plumbing -----------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` at a time (threads share the connection)."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.conn.execute(sql, tuple(args)).fetchall()]

    def study_dir(self, key: str) -> Path:
        return self.workdir / "studies" / key

    def clean_tmp(self) -> int:
        """Remove half-written instances a dead process left in ``tmp/``."""
        n = 0
        for p in self.tmp_dir.iterdir():
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
            elif p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
        return n

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.workdir).free

    # -- events -------------------------------------------------------------------------------
    def log_event(self, event: str, data: dict[str, Any]) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO events (t, event, data) VALUES (?, ?, ?)",
                (time.time(), event, json.dumps(data, default=str)),
            )

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.query("SELECT t, event, data FROM events ORDER BY id DESC LIMIT ?", (limit,))
        return [
            {"t": r["t"], "event": r["event"], **json.loads(r["data"] or "{}")}
            for r in reversed(rows)
        ]

    # -- receiving ----------------------------------------------------------------------------
    def has_instance(self, sop_uid: str) -> bool:
        return bool(self.query("SELECT 1 FROM instances WHERE sop_instance_uid=?", (sop_uid,)))

    def is_result(self, sop_uid: str) -> bool:
        """Whether ``sop_uid`` is one of the node's own results (queued or sent)."""
        return bool(self.query("SELECT 1 FROM outbox WHERE sop_instance_uid=? LIMIT 1", (sop_uid,)))

    def add_instance(
        self,
        *,
        sop_uid: str,
        sop_class_uid: str,
        study_uid: str,
        series_uid: str,
        path: Path,
        size: int,
        sha256: str,
        calling_ae: str,
    ) -> bool:
        """Record a received instance (its file already durable at ``path``) and re-open its
        study. Returns False when the instance was already known (same SOP Instance UID)."""
        key = study_key(study_uid)
        now = time.time()
        rel = path.relative_to(self.workdir).as_posix()
        with self.transaction() as c:
            n = c.execute(
                "INSERT OR IGNORE INTO instances (sop_instance_uid, sop_class_uid, "
                "study_key, study_instance_uid, series_instance_uid, path, size, "
                "sha256, calling_ae, received_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    sop_uid,
                    sop_class_uid,
                    key,
                    study_uid,
                    series_uid,
                    rel,
                    size,
                    sha256,
                    calling_ae,
                    now,
                ),
            ).rowcount
            c.execute(
                "INSERT INTO studies (key, study_instance_uid, state, first_received_at, "
                "last_received_at, n_instances, calling_ae, updated_at) "
                "VALUES (?, ?, 'receiving', ?, ?, 0, ?, ?) ON CONFLICT(key) DO NOTHING",
                (key, study_uid, now, now, calling_ae, now),
            )
            if n:
                c.execute(
                    "UPDATE studies SET state='receiving', last_received_at=?, "
                    "n_instances=n_instances+1, calling_ae=?, updated_at=? WHERE key=?",
                    (now, calling_ae, now, key),
                )
        return bool(n)

    # -- studies ------------------------------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """At start: studies a dead process left ``processing`` go back to ``queued``."""
        with self.transaction() as c:
            n = c.execute(
                "UPDATE studies SET state='queued', updated_at=? WHERE state='processing'",
                (time.time(),),
            ).rowcount
        return {"requeued_studies": n, "removed_partial_files": self.clean_tmp()}

    def queue_idle(self, idle_s: float) -> list[str]:
        """Studies with no new instance for ``idle_s`` seconds become ``queued``; their keys."""
        cut = time.time() - idle_s
        with self.transaction() as c:
            keys = [
                r[0]
                for r in c.execute(
                    "SELECT key FROM studies WHERE state='receiving' AND last_received_at <= ?",
                    (cut,),
                )
            ]
            c.executemany(
                "UPDATE studies SET state='queued', updated_at=? WHERE key=?",
                [(time.time(), k) for k in keys],
            )
        return keys

    def claim_study(self) -> dict[str, Any] | None:
        """The oldest queued study, now ``processing``; None when there is none."""
        with self.transaction() as c:
            row = c.execute(
                "SELECT * FROM studies WHERE state='queued' ORDER BY last_received_at, key LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE studies SET state='processing', attempts=attempts+1, updated_at=? "
                "WHERE key=?",
                (time.time(), row["key"]),
            )
            return dict(row)

    def finish_study(
        self,
        key: str,
        state: str,
        *,
        reason: str | None,
        summary: dict[str, Any],
        started_at: float,
    ) -> str:
        """Record the outcome of processing; a study that received instances while it was
        processed goes back to ``receiving`` (it runs again after the quiet period). Returns
        the state the study now has."""
        now = time.time()
        with self.transaction() as c:
            row = c.execute("SELECT last_received_at FROM studies WHERE key=?", (key,)).fetchone()
            if row is not None and (row[0] or 0) > started_at:
                state = "receiving"
            c.execute(
                "UPDATE studies SET state=?, reason=?, summary=?, processed_at=?, "
                "updated_at=? WHERE key=?",
                (state, reason, json.dumps(summary, default=str), now, now, key),
            )
        return state

    # -- outbox -------------------------------------------------------------------------------
    def enqueue(self, study: str, items: Sequence[tuple[Path, str, str]], destination: str) -> int:
        """Queue result files ``(path, sop_instance_uid, sop_class_uid)`` for ``destination``;
        an instance already queued (or sent) there is not queued again. Returns how many are
        new."""
        now = time.time()
        n = 0
        with self.transaction() as c:
            for path, sop, cls in items:
                rel = Path(path).resolve().relative_to(self.workdir).as_posix()
                n += c.execute(
                    "INSERT OR IGNORE INTO outbox (study_key, path, sop_instance_uid, "
                    "sop_class_uid, destination, state, created_at) "
                    "VALUES (?,?,?,?,?,'pending',?)",
                    (study, rel, sop, cls, destination, now),
                ).rowcount
        return n

    def due(self, limit: int = 64) -> list[dict[str, Any]]:
        """Pending outbox rows whose next try is due, oldest first."""
        return self.query(
            "SELECT * FROM outbox WHERE state='pending' AND next_attempt_at<=? ORDER BY id LIMIT ?",
            (time.time(), limit),
        )

    def next_due_in(self) -> float | None:
        rows = self.query("SELECT MIN(next_attempt_at) AS t FROM outbox WHERE state='pending'")
        t = rows[0]["t"] if rows else None
        return None if t is None else max(0.0, t - time.time())

    def mark_sent(self, ids: Sequence[int]) -> None:
        with self.transaction() as c:
            c.executemany(
                "UPDATE outbox SET state='sent', sent_at=?, last_error=NULL WHERE id=?",
                [(time.time(), i) for i in ids],
            )

    def mark_retry(
        self,
        ids: Sequence[int],
        error: str,
        *,
        base_s: float,
        max_s: float,
        max_attempts: int | None,
    ) -> list[int]:
        """Count a failed try; the next is after ``base_s * 2**(attempts-1)`` seconds (at most
        ``max_s``). With ``max_attempts``, a row that has had that many tries fails for good.
        Returns the ids that failed for good."""
        now = time.time()
        failed = []
        with self.transaction() as c:
            for i in ids:
                row = c.execute("SELECT attempts FROM outbox WHERE id=?", (i,)).fetchone()
                if row is None:
                    continue
                attempts = int(row[0]) + 1
                if max_attempts is not None and attempts >= max_attempts:
                    c.execute(
                        "UPDATE outbox SET state='failed', attempts=?, last_error=? WHERE id=?",
                        (attempts, error[:2000], i),
                    )
                    failed.append(i)
                    continue
                delay = min(max_s, base_s * 2 ** (attempts - 1))
                c.execute(
                    "UPDATE outbox SET attempts=?, next_attempt_at=?, last_error=? WHERE id=?",
                    (attempts, now + delay, error[:2000], i),
                )
        return failed

    def retry_failed_sends(self) -> int:
        """Failed outbox rows back to ``pending`` (attempts reset)."""
        with self.transaction() as c:
            return c.execute(
                "UPDATE outbox SET state='pending', attempts=0, next_attempt_at=0 "
                "WHERE state='failed'"
            ).rowcount

    # -- status -------------------------------------------------------------------------------
    def status(self, events: int = 20) -> dict[str, Any]:
        """Counts of instances, studies and outbox rows by state, failures with their reasons,
        and the latest events: what ``medxai listen --status`` shows."""
        studies = dict.fromkeys(STUDY_STATES, 0)
        for r in self.query("SELECT state, COUNT(*) AS n FROM studies GROUP BY state"):
            studies[r["state"]] = r["n"]
        outbox = dict.fromkeys(OUTBOX_STATES, 0)
        for r in self.query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state"):
            outbox[r["state"]] = r["n"]
        n_inst = self.query("SELECT COUNT(*) AS n FROM instances")[0]["n"]
        rejected = self.query(
            "SELECT COUNT(*) AS n FROM events WHERE event IN "
            "('store_refused', 'association_rejected')"
        )[0]["n"]
        failed_studies = self.query(
            "SELECT key, study_instance_uid, reason FROM studies "
            "WHERE state='failed' ORDER BY updated_at"
        )
        failed_sends = self.query(
            "SELECT id, study_key, sop_instance_uid, destination, "
            "attempts, last_error FROM outbox WHERE state='failed' "
            "ORDER BY id"
        )
        waiting = self.query(
            "SELECT id, study_key, sop_instance_uid, destination, attempts, "
            "next_attempt_at, last_error FROM outbox WHERE state='pending' "
            "AND attempts>0 ORDER BY id"
        )
        study_rows = []
        for r in self.query(
            "SELECT key, study_instance_uid, state, n_instances, reason, summary,"
            " last_received_at, processed_at FROM studies "
            "ORDER BY first_received_at"
        ):
            r["summary"] = json.loads(r["summary"]) if r["summary"] else None
            study_rows.append(r)
        return {
            "workdir": str(self.workdir),
            "instances_received": n_inst,
            "refused": rejected,
            "studies": studies,
            "outbox": outbox,
            "failed_studies": failed_studies,
            "failed_sends": failed_sends,
            "retrying_sends": waiting,
            "study_list": study_rows,
            "events": self.events(events),
        }
