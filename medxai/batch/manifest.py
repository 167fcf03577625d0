"""The job manifest: one SQLite database (WAL mode) in the output folder, the single source of truth
of a batch job.

Tables:

- ``job``: key/value settings of the job (export folder, model identity, output options); a run
  with other settings into the same output folder is refused.
- ``files``: one row per file of the export: kind, state, reason, the header fields the grouping
  used (so that a rerun does not read unchanged files again), scan time.
- ``series``: one row per stack (see :mod:`medxai.batch.scan`): state, reason, attempts, output
  folder and files, worker, timings.
- ``runs``: one row per run: when, what it did.

States: ``pending`` -> ``running`` -> ``done`` | ``failed`` | ``skipped``. A row is ``running``
only while a run holds it; rows left ``running`` by a run that died go back to ``pending`` when the
next run starts (:meth:`Manifest.recover`). Claims use ``BEGIN IMMEDIATE`` so that no two
processes claim the same series. One :class:`Manifest` (one connection) per process.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medxai.batch.scan import FileInfo, Stack
from medxai.batch.types import Result
from medxai.errors import InputError
from medxai.io.atomic import atomic_path

__all__ = ["Manifest", "STATES", "MANIFEST_NAME"]

STATES = ("pending", "running", "done", "skipped", "failed")
MANIFEST_NAME = "manifest.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    series_id TEXT,
    modality TEXT,
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    sop_instance_uid TEXT,
    failed_scan INTEGER NOT NULL DEFAULT 0,
    header TEXT,
    scan_s REAL,
    updated_at REAL
);
CREATE INDEX IF NOT EXISTS files_series ON files(series_id);
CREATE TABLE IF NOT EXISTS series (
    id TEXT PRIMARY KEY,
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    modality TEXT,
    series_number INTEGER,
    description TEXT,
    form TEXT,
    dims INTEGER,
    n_slices INTEGER,
    rows INTEGER,
    columns INTEGER,
    channels INTEGER,
    n_files INTEGER,
    files TEXT,
    fingerprint TEXT,
    output_name TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    detail TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    outputs TEXT,
    model TEXT,
    worker TEXT,
    started_at REAL,
    finished_at REAL,
    read_s REAL,
    predict_s REAL,
    explain_s REAL,
    write_s REAL,
    total_s REAL,
    quality_score REAL,
    updated_at REAL
);
CREATE INDEX IF NOT EXISTS series_state ON series(state);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL,
    finished_at REAL,
    status TEXT,
    settings TEXT,
    stats TEXT
);
"""

_SERIES_CSV = (
    "id",
    "state",
    "reason",
    "model",
    "quality_score",
    "output_name",
    "outputs",
    "modality",
    "form",
    "dims",
    "n_slices",
    "rows",
    "columns",
    "channels",
    "n_files",
    "study_instance_uid",
    "series_instance_uid",
    "series_number",
    "description",
    "attempts",
    "worker",
    "started_at",
    "finished_at",
    "read_s",
    "predict_s",
    "explain_s",
    "write_s",
    "total_s",
    "detail",
)
_FILES_CSV = (
    "path",
    "state",
    "kind",
    "reason",
    "series_id",
    "modality",
    "size",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "scan_s",
)


class Manifest:
    """A connection to the job manifest ``path`` (created if missing).

    Raises:
        InputError: the file is not a medxai manifest, or is from a newer medxai.
    """

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(
                str(self.path), timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            with self.transaction():
                self._create_or_migrate()
        except sqlite3.DatabaseError as exc:
            raise InputError(
                f"is not a usable medxai job manifest ({exc})",
                path=self.path,
                hint="use a new output folder, or delete the damaged manifest "
                "(its results folders stay valid)",
            ) from exc

    def _create_or_migrate(self) -> None:
        """The tables (if missing), the columns older manifests lack, the schema version.

        Raises:
            InputError: the manifest is from a newer medxai.
        """
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                self.conn.execute(stmt)
        cols = {r[1] for r in self.conn.execute("PRAGMA table_info(series)")}
        if "model" not in cols:  # manifests written before the model column
            self.conn.execute("ALTER TABLE series ADD COLUMN model TEXT")
        if "quality_score" not in cols:  # manifests written before the quality score
            self.conn.execute("ALTER TABLE series ADD COLUMN quality_score REAL")
        row = self.conn.execute("SELECT value FROM job WHERE key='schema'").fetchone()
        if row is None:
            self.conn.execute("INSERT INTO job VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise InputError(
                f"manifest schema {row[0]} is newer than this medxai understands "
                f"({SCHEMA_VERSION})",
                path=self.path,
                hint="upgrade medxai, or use a new output folder",
            )

    # -- plumbing -----------------------------------------------------------------------------
    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error): the write lock is taken up
        front, so a claim never races another writer."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- job settings -------------------------------------------------------------------------
    def settings(self) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT value FROM job WHERE key='settings'").fetchone()
        return json.loads(row[0]) if row else None

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        """Record ``settings`` on the first run; on later runs, refuse different ones.

        Raises:
            InputError: the output folder holds a job made with other settings.
        """
        old = self.settings()
        if old is None:
            with self.transaction() as c:
                c.execute(
                    "INSERT OR REPLACE INTO job VALUES ('settings', ?)",
                    (json.dumps(dict(settings), sort_keys=True),),
                )
            return
        diff = {
            k: (old.get(k), settings.get(k))
            for k in set(old) | set(settings)
            if old.get(k) != settings.get(k)
        }
        if diff:
            what = "; ".join(f"{k}: {a!r} before, {b!r} now" for k, (a, b) in sorted(diff.items()))
            raise InputError(
                f"holds a batch job made with other settings ({what})",
                path=self.path.parent,
                hint="rerun with the same settings to resume it, or write to a new "
                "output folder (-o)",
            )

    # -- runs ---------------------------------------------------------------------------------
    def start_run(self, settings: Mapping[str, Any]) -> int:
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO runs (started_at, status, settings) VALUES (?, ?, ?)",
                (time.time(), "running", json.dumps(dict(settings), sort_keys=True)),
            )
            return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, status: str, stats: Mapping[str, Any]) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE runs SET finished_at=?, status=?, stats=? WHERE id=?",
                (time.time(), status, json.dumps(dict(stats), default=str), run_id),
            )

    # -- recovery -----------------------------------------------------------------------------
    def recover(self, max_attempts: int = 3) -> dict[str, int]:
        """Rows a dead run left ``running`` go back to ``pending``; a series that was claimed
        ``max_attempts`` times without finishing (it crashed its worker each time) fails."""
        now = time.time()
        with self.transaction() as c:
            crashed = c.execute(
                "UPDATE series SET state='failed', reason=?, updated_at=? "
                "WHERE state='running' AND attempts>=?",
                (
                    f"interrupted or crashed its worker {max_attempts} times; not retried "
                    "(use --retry-failed to try again)",
                    now,
                    max_attempts,
                ),
            ).rowcount
            requeued = c.execute(
                "UPDATE series SET state='pending', worker=NULL, updated_at=? "
                "WHERE state='running'",
                (now,),
            ).rowcount
            self._sync_file_states(c)
        return {"requeued": requeued, "crashed": crashed}

    def release(self, ids: Iterable[str]) -> None:
        """Put claimed series back to ``pending`` (a run stopping cleanly) without counting the
        attempt."""
        ids = list(ids)
        if not ids:
            return
        with self.transaction() as c:
            c.executemany(
                "UPDATE series SET state='pending', worker=NULL, "
                "attempts=MAX(attempts-1, 0), updated_at=? "
                "WHERE id=? AND state='running'",
                [(time.time(), i) for i in ids],
            )
            self._sync_file_states(c, ids)

    def retry_failed(self) -> int:
        """Failed series go back to ``pending`` (attempts reset); returns how many."""
        with self.transaction() as c:
            n = c.execute(
                "UPDATE series SET state='pending', reason=NULL, detail=NULL, "
                "attempts=0, updated_at=? WHERE state='failed'",
                (time.time(),),
            ).rowcount
            self._sync_file_states(c)
        return n

    def requeue(self, ids: Iterable[str]) -> None:
        """Put series back to ``pending`` (their worker died, or their result folder is gone);
        the claim they had still counts as an attempt."""
        ids = list(ids)
        if not ids:
            return
        with self.transaction() as c:
            c.executemany("UPDATE series SET state='pending' WHERE id=?", [(i,) for i in ids])

    # -- scan results -------------------------------------------------------------------------
    def known_files(self) -> dict[str, FileInfo]:
        """Earlier scan results by path, for :func:`medxai.batch.scan.scan_export`'s cache."""
        out = {}
        for r in self.conn.execute(
            "SELECT path, size, mtime_ns, kind, reason, failed_scan, header, scan_s FROM files"
        ):
            out[r["path"]] = FileInfo(
                r["path"],
                r["size"],
                r["mtime_ns"],
                r["kind"],
                r["reason"],
                bool(r["failed_scan"]),
                json.loads(r["header"]) if r["header"] else None,
                r["scan_s"] or 0.0,
            )
        return out

    def sync_scan(
        self, files: Sequence[FileInfo], stacks: Sequence[Stack], fit: Mapping[str, str | None]
    ) -> dict[str, int]:
        """Store a scan: every file and every stack, with the state each should now have.

        ``fit`` maps stack id to why it does not fit the model (``None``: it fits). Stacks done
        before keep ``done`` unless their files changed (then they run again); failed ones stay
        failed (see :meth:`retry_failed`); stacks no longer in the export and files no longer
        there are removed from the manifest.
        """
        now = time.time()
        stats = {"new": 0, "changed": 0, "kept_done": 0, "kept_failed": 0, "removed": 0}
        with self.transaction() as c:
            old = {
                r["id"]: r for r in c.execute("SELECT id, state, fingerprint, reason FROM series")
            }
            for s in stacks:
                prev = old.pop(s.id, None)
                state, reason, counted = _stack_state(prev, s.fingerprint, fit.get(s.id))
                if counted:
                    stats[counted] += 1
                c.execute(
                    _upsert_series_sql(prev, s.fingerprint, state),
                    _series_values(s, state, reason, now),
                )
            c.executemany("DELETE FROM series WHERE id=?", [(sid,) for sid in old])
            stats["removed"] = len(old)
            self._store_files(c, files, {p: s.id for s in stacks for p in s.files}, now)
            self._sync_file_states(c)
        return stats

    @staticmethod
    def _store_files(
        c: sqlite3.Connection, files: Sequence[FileInfo], stack_of: Mapping[str, str], now: float
    ) -> None:
        """Every scanned file, with its stack; files no longer in the export are removed."""
        c.executemany(
            "INSERT OR REPLACE INTO files (path, size, mtime_ns, kind, state, reason, "
            "series_id, modality, study_instance_uid, series_instance_uid, "
            "sop_instance_uid, failed_scan, header, scan_s, updated_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [_file_values(fi, stack_of.get(fi.path), now) for fi in files],
        )
        seen = {fi.path for fi in files}
        gone = [r[0] for r in c.execute("SELECT path FROM files") if r[0] not in seen]
        c.executemany("DELETE FROM files WHERE path=?", [(p,) for p in gone])

    @staticmethod
    def _sync_file_states(c: sqlite3.Connection, ids: Sequence[str] | None = None) -> None:
        """Image files take the state (and reason) of their series."""
        sql = (
            "UPDATE files SET state=(SELECT state FROM series WHERE series.id=files.series_id),"
            " reason=(SELECT reason FROM series WHERE series.id=files.series_id) "
            "WHERE kind='image' AND series_id IS NOT NULL"
        )
        if ids is None:
            c.execute(sql)
        else:
            c.executemany(sql + " AND series_id=?", [(i,) for i in ids])

    # -- claims and results -------------------------------------------------------------------
    def pending(self) -> list[dict[str, Any]]:
        """Pending series, in a stable order (2D before 3D, then by output folder)."""
        rows = self.conn.execute(
            "SELECT * FROM series WHERE state='pending' ORDER BY dims, output_name, id"
        ).fetchall()
        return [self._series_dict(r) for r in rows]

    def claim(self, ids: Sequence[str], worker: str) -> list[str]:
        """Mark ``ids`` ``running`` for ``worker`` (those still pending); returns the claimed."""
        claimed = []
        now = time.time()
        with self.transaction() as c:
            for i in ids:
                n = c.execute(
                    "UPDATE series SET state='running', worker=?, started_at=?, "
                    "attempts=attempts+1, updated_at=? WHERE id=? AND state='pending'",
                    (worker, now, now, i),
                ).rowcount
                if n:
                    claimed.append(i)
            self._sync_file_states(c, claimed)
        return claimed

    def record(self, result: Result) -> None:
        """Store the outcome of one series (a :class:`Result` of :mod:`medxai.batch.runner`)."""
        t = result.timings
        now = time.time()
        with self.transaction() as c:
            c.execute(
                "UPDATE series SET state=?, reason=?, detail=?, outputs=?, model=?, worker=?, "
                "finished_at=?, read_s=?, predict_s=?, explain_s=?, write_s=?, total_s=?, "
                "quality_score=?, updated_at=? WHERE id=?",
                (
                    result.state,
                    result.reason,
                    result.detail,
                    json.dumps(result.outputs) if result.outputs is not None else None,
                    result.model,
                    result.worker,
                    now,
                    t.get("read"),
                    t.get("predict"),
                    t.get("explain"),
                    t.get("write"),
                    t.get("total"),
                    result.quality_score,
                    now,
                    result.id,
                ),
            )
            self._sync_file_states(c, [result.id])

    # -- queries ------------------------------------------------------------------------------
    @staticmethod
    def _series_dict(r: sqlite3.Row) -> dict[str, Any]:
        d = dict(r)
        for k in ("files", "outputs"):
            d[k] = json.loads(d[k]) if d.get(k) else ([] if k == "files" else None)
        return d

    def series(self, state: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM series" + (" WHERE state=?" if state else "") + " ORDER BY output_name"
        return [self._series_dict(r) for r in self.conn.execute(sql, (state,) if state else ())]

    def files(self, state: str | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT path, size, kind, state, reason, series_id, modality, study_instance_uid,"
            " series_instance_uid, sop_instance_uid, scan_s FROM files"
            + (" WHERE state=?" if state else "")
            + " ORDER BY path"
        )
        return [dict(r) for r in self.conn.execute(sql, (state,) if state else ())]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"files": {state: n}, "series": {state: n}}`` with every state present."""
        out: dict[str, dict[str, int]] = {}
        for table in ("files", "series"):
            cnt = dict.fromkeys(STATES, 0)
            for state, n in self.conn.execute(
                f"SELECT state, COUNT(*) FROM {table} GROUP BY state"
            ):
                cnt[state] = n
            out[table] = cnt
        return out

    def file_series(self) -> Iterator[tuple[str, str | None]]:
        """``(path relative to the export, series id or None)`` of every file."""
        for path, sid in self.conn.execute("SELECT path, series_id FROM files"):
            yield str(path), sid

    def file_reasons(self) -> dict[str, int]:
        """Why files that are not images to process were passed over (skipped or failed):
        ``{reason: number of files}``, most frequent first."""
        rows = self.conn.execute(
            "SELECT reason, COUNT(*) AS n FROM files WHERE kind != 'image' "
            "GROUP BY reason ORDER BY n DESC, reason"
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def model_counts(self) -> dict[str, int]:
        """Series done per model (``model`` column: the model that made each result)."""
        rows = self.conn.execute(
            "SELECT model, COUNT(*) FROM series WHERE state='done' GROUP BY model ORDER BY model"
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def reasons(self, state: str, table: str = "series") -> dict[str, int]:
        """How often each reason occurs among rows in ``state``, most common first."""
        if table not in ("series", "files"):
            raise ValueError(table)
        rows = self.conn.execute(
            f"SELECT reason, COUNT(*) AS n FROM {table} WHERE state=? "
            "GROUP BY reason ORDER BY n DESC, reason",
            (state,),
        )
        return {str(r[0]): int(r[1]) for r in rows}

    # -- export -------------------------------------------------------------------------------
    def export_csv(self, folder: str | Path) -> dict[str, Path]:
        """Write ``manifest_series.csv`` and ``manifest_files.csv`` into ``folder`` (atomically:
        a reader never sees a half-written file)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for table, cols in (("series", _SERIES_CSV), ("files", _FILES_CSV)):
            dest = folder / f"manifest_{table}.csv"
            order = "output_name, id" if table == "series" else "path"
            rows = self.conn.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}")
            _write_csv_atomic(dest, cols, rows)
            out[table] = dest
        return out


# ---------------------------------------------------------------------------------------------
# the steps of Manifest.sync_scan
# ---------------------------------------------------------------------------------------------

_SERIES_COLUMNS = (
    "id, study_instance_uid, series_instance_uid, modality, series_number, description, form, "
    "dims, n_slices, rows, columns, channels, n_files, files, fingerprint, output_name, state, "
    "reason, updated_at"
)
_SERIES_UPDATED = (
    "study_instance_uid",
    "series_instance_uid",
    "modality",
    "series_number",
    "description",
    "form",
    "dims",
    "n_slices",
    "rows",
    "columns",
    "channels",
    "n_files",
    "files",
    "fingerprint",
    "output_name",
    "state",
    "reason",
    "updated_at",
)


def _stack_state(
    prev: Mapping[str, Any] | None, fingerprint: str, misfit: str | None
) -> tuple[str, str | None, str | None]:
    """The state and reason a scanned stack gets, given its previous row, and the statistic it
    counts towards (``new``, ``changed``, ``kept_done``, ``kept_failed`` or None)."""
    if misfit is not None:
        return "skipped", misfit, None
    if prev is None:
        return "pending", None, "new"
    if prev["fingerprint"] != fingerprint:
        return "pending", None, "changed"
    if prev["state"] == "done":
        return "done", None, "kept_done"
    if prev["state"] == "failed":
        return "failed", prev["reason"], "kept_failed"
    return "pending", None, None


def _upsert_series_sql(prev: Mapping[str, Any] | None, fingerprint: str, state: str) -> str:
    """INSERT ... ON CONFLICT UPDATE of one stack's row: a kept result keeps its detail, outputs
    and worker; attempts count claims of the same input (see :meth:`Manifest.recover`), so new
    input starts over."""
    keep_result = state in ("done", "failed") and prev is not None
    same_input = prev is not None and prev["fingerprint"] == fingerprint
    updates = [f"{col}=excluded.{col}" for col in _SERIES_UPDATED]
    if not keep_result:
        updates += ["detail=NULL", "outputs=NULL", "worker=NULL"]
    if not same_input:
        updates.append("attempts=0")
    marks = ",".join("?" * len(_SERIES_COLUMNS.split(",")))
    return (
        f"INSERT INTO series ({_SERIES_COLUMNS}) VALUES ({marks}) "
        f"ON CONFLICT(id) DO UPDATE SET {', '.join(updates)}"
    )


def _series_values(s: Stack, state: str, reason: str | None, now: float) -> tuple[Any, ...]:
    return (
        s.id,
        s.study_uid,
        s.series_uid,
        s.modality,
        s.series_number,
        s.description,
        s.form,
        s.dims,
        s.n_slices,
        s.rows,
        s.columns,
        s.channels,
        len(s.files),
        json.dumps(s.files),
        s.fingerprint,
        s.output_name,
        state,
        reason,
        now,
    )


def _file_values(fi: FileInfo, series_id: str | None, now: float) -> tuple[Any, ...]:
    """One ``files`` row: image files follow their series (set after), the others are skipped,
    or failed when damaged, with the reason."""
    h = fi.header or {}
    if fi.kind == "image":
        state, reason = "pending", None
    else:
        state, reason = ("failed" if fi.failed else "skipped"), fi.reason
    return (
        fi.path,
        fi.size,
        fi.mtime_ns,
        fi.kind,
        state,
        reason,
        series_id,
        h.get("modality"),
        h.get("study_instance_uid"),
        h.get("series_instance_uid"),
        h.get("sop_instance_uid"),
        int(fi.failed),
        json.dumps(fi.header) if fi.header is not None else None,
        fi.seconds,
        now,
    )


def _write_csv_atomic(dest: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """``dest`` written through a temporary file and one rename (``None`` as an empty cell)."""
    with atomic_path(dest) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow(["" if v is None else v for v in r])
