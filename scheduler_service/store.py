"""SQLite persistence of desired specs, versions and per-replica state: one row per model.

Every change to a model is written, in one transaction, before it is acknowledged or acted
on. WAL with synchronous=NORMAL survives a killed process (kill -9): a committed
transaction is in the log the moment commit returns.

The learned footprints (per artifact and GPU product: GPU memory per device, host memory)
live in a table of their own. A state file of an older schema version is migrated in place
at open (`_MIGRATIONS`, one transaction per step); a newer one is refused, as is a downgrade:
schema 2 (host memory learned) cannot be read by a scheduler that reads 1, nor schema 3 (a
model's copies in its row) by one that reads 2.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, TextIO

from contract.names import shown
from scheduler_service.model import (
    CopyState,
    Footprint,
    Learned,
    ModelCopy,
    ModelRecord,
    ModelSpec,
    ModelState,
)

SCHEMA_VERSION = 3
# `copies`: the model's copies, a JSON list of [server, index, version, state, reason, device
# UUIDs, footprint per device, retire]. In the model's row, a save is one statement.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    server_reasons TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    copies TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS footprints (
    storage_uri TEXT NOT NULL,
    artifact_version TEXT NOT NULL,  -- '' when the spec gives none
    product TEXT NOT NULL,
    gpu_bytes INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    recent TEXT NOT NULL,
    updated_at REAL NOT NULL,
    host_bytes INTEGER NOT NULL DEFAULT 0,
    host_samples INTEGER NOT NULL DEFAULT 0,
    host_recent TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (storage_uri, artifact_version, product)
);
"""
_HOST_COLUMNS = (
    ("host_bytes", "INTEGER NOT NULL DEFAULT 0"),
    ("host_samples", "INTEGER NOT NULL DEFAULT 0"),
    ("host_recent", "TEXT NOT NULL DEFAULT '[]'"),
)


def _add_host_columns(db: sqlite3.Connection) -> None:
    """1 -> 2: learned host memory next to the GPU figures (a schema-1 file may predate the
    footprints table, which _SCHEMA has just created whole)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(footprints)")}
    for column, declaration in _HOST_COLUMNS:
        if column not in have:
            db.execute(f"ALTER TABLE footprints ADD COLUMN {column} {declaration}")


def _copies_into_models(db: sqlite3.Connection) -> None:
    """2 -> 3: each model's copies move from a table of their own (a row per copy) into the
    model's row, so that a save is one statement."""
    have = {row[1] for row in db.execute("PRAGMA table_info(models)")}
    if "copies" not in have:
        db.execute("ALTER TABLE models ADD COLUMN copies TEXT NOT NULL DEFAULT '[]'")
    names = {name for (name,) in db.execute("SELECT name FROM models")}
    copies: dict[str, list[list[Any]]] = {}
    for model, server, idx, version, state, reason, devices, footprint, retire in db.execute(
        "SELECT model, server, idx, version, state, reason, devices, footprint, retire "
        "FROM replicas ORDER BY model, server, idx"
    ):
        where = f"model {shown(str(model))}'s copy on {shown(f'{server}-{idx}')}"
        if model not in names:  # possible only in a file written with foreign keys off
            raise ValueError(f"{where}: the model has no row")
        try:
            row = [server, idx, version, state, reason, _loads(devices), _loads(footprint)]
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        copies.setdefault(model, []).append([*row, retire])
    db.executemany(
        "UPDATE models SET copies=? WHERE name=?",
        [(json.dumps(rows), model) for model, rows in copies.items()],
    )
    db.execute("DROP TABLE replicas")


# What turns a state file of each older schema version into the next one.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _add_host_columns,
    2: _copies_into_models,
}
_SPEC_FIELDS = fields(ModelSpec)
_UPSERT = (
    "INSERT INTO models VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
    "version=excluded.version, spec=excluded.spec, state=excluded.state, "
    "reason=excluded.reason, server_reasons=excluded.server_reasons, "
    "deleted=excluded.deleted, updated_at=excluded.updated_at, copies=excluded.copies"
)


class StoreError(RuntimeError):
    """The state file cannot be used (wrong schema version, corrupt, in use, read-only)."""


# How long a write waits for a file another program holds busy: a pass that finds it busy
# fails and is tried again, rather than holding the event loop.
_BUSY_TIMEOUT_S = 0.05
_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}


def _owner_only(path: Path) -> None:
    """The state file readable and writable by its owner alone (it holds every model's
    storageUri, which may carry a signed URL's token); SQLite gives its -wal and -shm files
    the same mode. Created so when missing, narrowed when wider."""
    if str(path) == ":memory:":  # SQLite's in-memory database: no file
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


@contextmanager
def state_file_lock(path: Path) -> Iterator[None]:
    """Hold `<path>.lock` exclusively while the scheduler runs: two schedulers on one state
    file would each place models the other does not know of. Raises StoreError naming the
    process that holds it. (A Store alone takes no lock: tools and tests read the file.)"""
    if str(path) == ":memory:":  # SQLite's in-memory database: nobody else can open it
        yield
        return
    handle = _lock(path)
    try:
        yield
    finally:
        handle.close()


def _lock(path: Path) -> TextIO:
    lock_path = path.with_name(path.name + ".lock")
    try:
        handle = os.fdopen(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
    except OSError as exc:
        raise StoreError(
            f"{path}: cannot use the state file ({exc.strerror}: {lock_path}); is its folder "
            "there and writable? (--db / GPUPLACE_SCHEDULER_DB)"
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StoreError(
            f"{path}: the state file is in use by another scheduler ({holder}); one "
            "scheduler per state file"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


class Store:
    """The scheduler's `service.StateStore`, in one SQLite file."""

    def __init__(self, path: Path, synchronous: str = "normal") -> None:
        # What was last written per model: its spec (as JSON) and its highest version, so
        # that a save writes them again only when they changed.
        self._specs: dict[str, tuple[ModelSpec, str]] = {}
        self._versions: dict[str, int] = {}
        # Every name that may have a version row (read once, then each name saved added):
        # a name not in it was never seen, and costs no query.
        self._named: set[str] | None = None
        self._batched = False  # inside `batch`: saves are part of its transaction
        try:
            _owner_only(path)
            # A busy file (another program writing it) fails a pass at once, to be tried
            # again, instead of holding the event loop while SQLite waits.
            self._db = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_TIMEOUT_S)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={_SYNCHRONOUS[synchronous]}")
            self._db.executescript(_SCHEMA)
            # Writable? (A read-only file opens, reads, and would fail every load later.)
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"{path}: cannot use the state file ({exc}); is it a gpuplace state file, "
                "and are it and its folder there and writable? (--db / GPUPLACE_SCHEDULER_DB)"
            ) from None
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            return
        found = int(row[0])
        if not min(_MIGRATIONS) <= found <= SCHEMA_VERSION:
            raise StoreError(
                f"{path}: schema version {row[0]}, this scheduler reads {SCHEMA_VERSION}"
                + (" (written by a newer scheduler)" if found > SCHEMA_VERSION else "")
            )
        for version in range(found, SCHEMA_VERSION):
            try:
                with self._transaction():
                    _MIGRATIONS[version](self._db)
                    self._db.execute(
                        "UPDATE meta SET value=? WHERE key='schema'", (str(version + 1),)
                    )
            except (sqlite3.Error, ValueError) as exc:
                raise StoreError(
                    f"{path}: cannot migrate the state file from schema {version} to "
                    f"{version + 1} ({exc}); nothing was changed"
                ) from None

    def close(self) -> None:
        self._db.close()

    def save(self, record: ModelRecord) -> None:
        """Write the model and all its copies atomically: one statement (after a first that
        keeps the number of a version this store has not written)."""
        spec = record.spec
        known = self._specs.get(record.name)
        if known is None or known[0] != spec:
            # Its fields are plain values and tuples of them: no asdict's deep copy needed.
            known = (spec, json.dumps({f.name: getattr(spec, f.name) for f in _SPEC_FIELDS}))
        row = (
            record.name,
            record.version,
            known[1],
            record.state.value,
            record.reason,
            _dumps(record.server_reasons),
            int(record.deleted),
            record.updated_at,
            _dumps(
                [
                    [
                        copy.server,
                        copy.index,
                        copy.version,
                        copy.state.value,
                        copy.reason,
                        copy.device_uuids,
                        copy.footprint_bytes,
                        int(copy.retire),
                    ]
                    for copy in record.copies.values()
                ]
            ),
        )
        if self._versions.get(record.name) != record.version:
            # The highest version ever given to this name outlives the model (see delete).
            # Written first, on its own: if the model's row then fails, the number is only
            # kept higher than any saved, and a version is never given twice.
            if self._named is not None:
                self._named.add(record.name)
            self._statement(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                (f"version:{record.name}", str(record.version)),
            )
        self._statement(_UPSERT, row)
        self._specs[record.name] = known
        self._versions[record.name] = record.version

    def last_version(self, name: str) -> int:
        """The highest version this name ever had (0: never seen), deleted models included."""
        if self._named is None:
            self._named = {
                key.removeprefix("version:")
                for (key,) in self._db.execute(
                    "SELECT key FROM meta WHERE substr(key, 1, 8) = 'version:'"
                )
            }
        if name not in self._named:
            return 0
        row = self._db.execute(
            "SELECT value FROM meta WHERE key=?", (f"version:{name}",)
        ).fetchone()
        return int(row[0]) if row else 0

    def save_footprint(self, footprint: Footprint) -> None:
        """Keep one learned footprint, replacing the one of its artifact and product."""
        version = footprint.artifact_version
        gpu, host = footprint.gpu, footprint.host
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO footprints (storage_uri, artifact_version, product, "
                "gpu_bytes, samples, recent, updated_at, host_bytes, host_samples, host_recent) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    footprint.storage_uri,
                    "" if version is None else str(version),
                    footprint.product,
                    gpu.size,
                    gpu.samples,
                    json.dumps(gpu.recent),
                    footprint.updated_at,
                    host.size,
                    host.samples,
                    json.dumps(host.recent),
                ),
            )

    def footprints(self) -> list[Footprint]:
        """Every learned footprint, as last saved (StoreError when one cannot be read)."""
        try:
            return self._footprints()
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise StoreError(
                f"the state file's learned footprints cannot be read ({type(exc).__name__}: "
                f"{shown(str(exc), 200)}); restore a backup, or move the file away to start "
                "empty"
            ) from None

    def _footprints(self) -> list[Footprint]:
        return [
            Footprint(
                storage_uri=uri,
                artifact_version=int(version) if version else None,
                product=product,
                gpu=Learned(gpu_bytes, samples, tuple(json.loads(recent))),
                host=Learned(host_bytes, host_samples, tuple(json.loads(host_recent))),
                updated_at=updated_at,
            )
            for (
                uri,
                version,
                product,
                gpu_bytes,
                samples,
                recent,
                updated_at,
                host_bytes,
                host_samples,
                host_recent,
            ) in self._db.execute(
                "SELECT storage_uri, artifact_version, product, gpu_bytes, samples, recent, "
                "updated_at, host_bytes, host_samples, host_recent FROM footprints "
                "ORDER BY storage_uri, artifact_version, product"
            )
        ]

    def delete(self, name: str) -> None:
        self._statement("DELETE FROM models WHERE name=?", (name,))
        self._specs.pop(name, None)

    def load(self) -> list[ModelRecord]:
        """Every model with its copies, as last saved. Raises StoreError naming the row when
        one cannot be read (a file damaged, or written by something else)."""
        records: list[ModelRecord] = []
        where = "the models table"
        try:
            for (
                name,
                version,
                spec,
                state,
                reason,
                reasons,
                deleted,
                updated_at,
                copies,
            ) in self._db.execute(
                "SELECT name, version, spec, state, reason, server_reasons, deleted, "
                "updated_at, copies FROM models ORDER BY name"
            ):
                where = f"model {shown(str(name))}"
                fields = json.loads(spec)
                fields["requirements"] = tuple(fields["requirements"])
                fields["parameters"] = tuple(tuple(item) for item in fields["parameters"])
                record = ModelRecord(
                    spec=ModelSpec(**fields),
                    version=version,
                    state=ModelState(state),
                    reason=reason,
                    server_reasons=tuple(tuple(item) for item in _loads(reasons)),
                    deleted=bool(deleted),
                    updated_at=updated_at,
                )
                for server, idx, at, copy_state, why, devices, footprint, retire in _loads(copies):
                    where = f"model {shown(str(name))}'s copy on {shown(f'{server}-{idx}')}"
                    copy = ModelCopy(
                        server=server,
                        index=idx,
                        version=at,
                        state=CopyState(copy_state),
                        reason=why,
                        device_uuids=tuple(devices),
                        footprint_bytes=footprint,
                        retire=bool(retire),
                    )
                    record.copies[copy.key] = copy
                records.append(record)
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"the state file's {where} cannot be read ({type(exc).__name__}: "
                f"{shown(str(exc), 200)}); restore a backup, or move the file away to start "
                "empty"
            ) from None
        return records

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The saves and deletes inside as one transaction, committed at the end: a pass over
        many models writes once. A save that fails is undone alone (each of its statements
        is; a new version's number written before its row stays, which only keeps the
        number higher) and raises; the others stay. Raises when the commit fails: then none
        of them happened."""
        self._db.execute("BEGIN IMMEDIATE")
        self._batched = True
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._forget_written()
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        finally:
            self._batched = False

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self._batched:
            if not self._db.in_transaction:  # SQLite ended the batch on an error
                raise StoreError("the batch's transaction was rolled back by SQLite")
            self._db.execute("SAVEPOINT one")
            try:
                yield
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK TO one")
                    self._db.execute("RELEASE one")
                raise
            self._db.execute("RELEASE one")
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _statement(self, sql: str, parameters: tuple[Any, ...]) -> None:
        """One statement: atomic by itself, in the batch's transaction (a failure undoes it
        alone) or, outside a batch, its own."""
        if self._batched and not self._db.in_transaction:  # SQLite ended the batch on an error
            raise StoreError("the batch's transaction was rolled back by SQLite")
        self._db.execute(sql, parameters)

    def _forget_written(self) -> None:
        """What was written may not be: write specs and versions again."""
        self._specs.clear()
        self._versions.clear()


def _dumps(value: list[Any] | tuple[Any, ...]) -> str:
    """json.dumps, without its cost for the empty lists most rows hold (no reasons, no
    copies)."""
    return json.dumps(value) if value else "[]"


def _loads(text: str) -> Any:
    """json.loads, without its cost for the empty list and object most values hold (a
    restart with 10,000 models reads 20,000 of them; a migration, each copy's two)."""
    if text == "[]":
        return []
    if text == "{}":
        return {}
    return json.loads(text)
