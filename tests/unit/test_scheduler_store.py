"""The state file: what is saved comes back, and a foreign schema is refused."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import fields, replace
from pathlib import Path

import pytest

from scheduler_service.model import (
    CopyState,
    Footprint,
    Learned,
    ModelCopy,
    ModelRecord,
    ModelState,
    validate_spec,
)
from scheduler_service.store import Store, StoreError

GiB = 2**30
MiB = 2**20


def record() -> ModelRecord:
    spec = validate_spec(
        "llama3",
        requirements=("model-on-gpu",),
        gpu_memory="20Gi",
        replicas=2,
        min_replicas=1,
        parameters=(("implementation", "mlserver_sklearn.SKLearnModel"),),
    )
    model = ModelRecord(spec=spec, version=3, state=ModelState.PROGRESSING, reason="r")
    model.server_reasons = (("mlserver", "missing capability model-on-gpu"),)
    for index, state in ((0, CopyState.AVAILABLE), (1, CopyState.LOADING)):
        model.copies[("gpu", index)] = ModelCopy(
            server="gpu",
            index=index,
            version=3,
            state=state,
            device_uuids=("GPU-a",),
            footprint_bytes={"GPU-a": 123},
            retire=index == 1,
        )
    return model


def test_saved_models_come_back_equal(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    saved = record()
    store.save(saved)
    store.close()
    (loaded,) = Store(tmp_path / "s.db").load()
    assert loaded.spec == saved.spec
    assert (loaded.version, loaded.state, loaded.reason) == (3, ModelState.PROGRESSING, "r")
    assert loaded.server_reasons == saved.server_reasons
    assert loaded.copies == saved.copies


def test_save_replaces_replicas_and_delete_removes_everything(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    model = record()
    store.save(model)
    del model.copies[("gpu", 1)]
    store.save(model)
    assert list(store.load()[0].copies) == [("gpu", 0)]
    store.delete("llama3")
    assert store.load() == []


def test_a_state_file_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "s.db").close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    with pytest.raises(StoreError, match="schema version 99"):
        Store(tmp_path / "s.db")


@pytest.mark.parametrize("make", ["missing-folder", "not-a-database"])
def test_a_state_file_that_cannot_be_used_is_a_clear_error(tmp_path: Path, make: str) -> None:
    path = tmp_path / "state.db"
    if make == "missing-folder":
        path = tmp_path / "no" / "such" / "folder" / "state.db"
    else:
        path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError, match=r"cannot use the state file .*--db"):
        Store(path)


def test_learned_footprints_come_back_and_replace_by_artifact_and_product(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    first = Footprint("gs://m/llama", None, "NVIDIA H100", Learned(17 * GiB, 1, (17 * GiB,)))
    other = Footprint("gs://m/llama", 2, "NVIDIA H100", Learned(18 * GiB, 1, (18 * GiB,)))
    a100 = Footprint("gs://m/llama", None, "NVIDIA A100", Learned(16 * GiB, 1, (16 * GiB,)))
    for footprint in (first, other, a100):
        store.save_footprint(footprint)
    again = replace(
        first, gpu=first.gpu.measured(19 * GiB), host=Learned(300 * MiB, 1, (300 * MiB,))
    )
    store.save_footprint(again)
    store.close()
    reopened = Store(tmp_path / "s.db")
    assert reopened.footprints() == [a100, again, other]
    assert again.gpu == Learned(19 * GiB, 2, (17 * GiB, 19 * GiB))
    assert reopened.load() == []


# The state file as schema 1 was first written, before learned footprints had a table.
_OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE models (
    name TEXT PRIMARY KEY, version INTEGER NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL, server_reasons TEXT NOT NULL, deleted INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE replicas (
    model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
    server TEXT NOT NULL, idx INTEGER NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL, devices TEXT NOT NULL, footprint TEXT NOT NULL,
    retire INTEGER NOT NULL, PRIMARY KEY (model, server, idx)
);
INSERT INTO meta VALUES ('schema', '1');
"""


# A model as an old scheduler (schema 1 or 2) wrote it: a row of its own per copy.
_OLD_MODEL = """
INSERT INTO models VALUES ('llama3', 3, '{"name": "llama3", "storage_uri": "",
    "requirements": ["model-on-gpu"], "server": "", "memory": "", "gpu_memory": "20Gi",
    "gpus": 1, "replicas": 2, "min_replicas": 1, "parameters": [], "memory_bytes": 0,
    "gpu_memory_bytes": 21474836480, "artifact_version": null, "namespace": "",
    "secret_name": ""}', 'Progressing', 'r', '[]', 0, 7.0);
INSERT INTO replicas VALUES ('llama3', 'gpu', 0, 3, 'Available', '', '["GPU-a"]',
    '{"GPU-a": 123}', 0);
INSERT INTO replicas VALUES ('llama3', 'gpu', 1, 3, 'Loading', '', '[]', '{}', 1);
"""


def test_a_state_file_from_before_learned_footprints_opens_and_learns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(_OLD_SCHEMA + _OLD_MODEL)  # schema 1: no footprints table yet
    store = Store(path)
    (model,) = store.load()
    assert (model.name, model.version, model.state) == ("llama3", 3, ModelState.PROGRESSING)
    assert model.copies == {
        ("gpu", 0): ModelCopy(
            "gpu",
            0,
            3,
            CopyState.AVAILABLE,
            device_uuids=("GPU-a",),
            footprint_bytes={"GPU-a": 123},
        ),
        ("gpu", 1): ModelCopy("gpu", 1, 3, CopyState.LOADING, retire=True),
    }
    assert store.footprints() == []
    learned = Footprint(
        "gs://m/llama", None, "NVIDIA H100", Learned(GiB, 1, (GiB,)), updated_at=1.0
    )
    store.save_footprint(learned)
    store.save(model)
    store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("3",)
        columns = {row[1] for row in db.execute("PRAGMA table_info(footprints)")}
        assert {"gpu_bytes", "host_bytes", "host_samples", "host_recent"} <= columns
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert "replicas" not in tables  # the copies are in their model's row now
    again = Store(path)
    assert again.load() == [model]
    assert again.footprints() == [learned]


# Schema 1 as the first learning scheduler wrote it: GPU figures only.
_SCHEMA_1_FOOTPRINTS = """
CREATE TABLE footprints (
    storage_uri TEXT NOT NULL, artifact_version TEXT NOT NULL, product TEXT NOT NULL,
    gpu_bytes INTEGER NOT NULL, samples INTEGER NOT NULL, recent TEXT NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (storage_uri, artifact_version, product)
);
INSERT INTO footprints VALUES ('gs://m/llama', '3', 'NVIDIA H100', 1073741824, 2,
    '[1000000000, 1073741824]', 5.0);
"""


def test_a_schema_1_file_is_migrated_keeping_its_gpu_figures(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(_OLD_SCHEMA + _SCHEMA_1_FOOTPRINTS)
    store = Store(path)
    kept = Footprint(
        "gs://m/llama", 3, "NVIDIA H100", Learned(GiB, 2, (10**9, GiB)), updated_at=5.0
    )
    assert store.footprints() == [kept]
    learned = replace(kept, host=Learned(MiB, 1, (MiB,)))
    store.save_footprint(learned)
    store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("3",)
    assert Store(path).footprints() == [learned]


def test_a_file_of_a_newer_scheduler_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    Store(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE meta SET value='4' WHERE key='schema'")
        db.commit()
    with pytest.raises(StoreError, match=r"schema version 4, this scheduler reads 3 \(written"):
        Store(path)


def test_a_migration_that_fails_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "odd.db"
    with closing(sqlite3.connect(path)) as db:
        # Something named footprints that no column can be added to.
        db.executescript(_OLD_SCHEMA + "CREATE VIEW footprints AS SELECT 1 AS storage_uri;")
    with pytest.raises(StoreError, match=r"cannot migrate the state file from schema 1 to 2"):
        Store(path)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("1",)


def test_a_clone_shares_nothing_it_may_change() -> None:
    """Every field of a record and of its copies that can change in place is the clone's
    own (a field added later is checked too); the rest is shared as it cannot change."""
    original = record()
    original.excluded_until[("gpu-a", 0)] = 5.0
    clone = original.clone()
    assert clone == original
    mutable = (dict, list, set)
    pairs = [(original, clone)] + [
        (original.copies[key], clone.copies[key]) for key in original.copies
    ]
    assert len(pairs) > 1
    for before, after in pairs:
        for item in fields(before):
            value = getattr(before, item.name)
            if isinstance(value, mutable):
                assert getattr(after, item.name) is not value, item.name
            else:
                assert hash(value) is not None  # immutable (hashable) when shared
    clone.copies[next(iter(clone.copies))].footprint_bytes["GPU-x"] = 1
    clone.excluded_until.clear()
    assert original.copies == record().copies and original.excluded_until


def test_a_batch_commits_together_and_a_failed_save_inside_is_undone_alone(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "s.db")
    store._db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON models WHEN NEW.name = 'bad' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    good, bad = record(), record()
    bad.spec = replace(bad.spec, name="bad")
    with store.batch():
        store.save(good)
        with pytest.raises(sqlite3.IntegrityError):
            store.save(bad)
        replaced = replace(good, reason="after the failed one")
        store.save(replaced)
    assert Store(tmp_path / "s.db").load() == [replaced]
    # Its version's number was kept before its row failed: a later "bad" gets a higher one.
    assert Store(tmp_path / "s.db").last_version("bad") == bad.version


def test_a_batch_that_fails_saves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    with pytest.raises(RuntimeError), store.batch():
        store.save(record())
        raise RuntimeError("the commit failed")
    assert store.load() == []
    store.save(record())  # and the store goes on, its caches forgotten: the spec is written
    assert [m.spec for m in Store(tmp_path / "s.db").load()] == [record().spec]


def test_a_save_is_one_statement_once_its_version_is_written(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    model = record()
    store.save(model)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    model.copies[("gpu", 1)].state = CopyState.AVAILABLE  # one copy changes
    del model.copies[("gpu", 0)]  # one goes
    model.copies[("gpu", 2)] = ModelCopy("gpu", 2, 3, CopyState.LOADING)  # one comes
    store.save(model)
    assert len(statements) == 1 and statements[0].startswith("INSERT INTO models"), statements
    assert Store(tmp_path / "s.db").load() == [model]
    statements.clear()
    model.version = 4  # a new version: its number is kept first (never given twice)
    store.save(model)
    store._db.set_trace_callback(None)
    assert [s.split()[:3] for s in statements] == [
        ["INSERT", "OR", "REPLACE"],
        ["INSERT", "INTO", "models"],
    ]
    assert "version:llama3" in statements[0]
    assert Store(tmp_path / "s.db").last_version("llama3") == 4


def test_the_last_version_of_a_name_outlives_its_model_and_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    assert store.last_version("llama3") == 0
    store.save(record())  # version 3
    store.delete("llama3")
    assert store.last_version("llama3") == 3
    again = Store(tmp_path / "s.db")  # a restart: the names are read from the file
    statements: list[str] = []
    again._db.set_trace_callback(statements.append)
    assert (again.last_version("llama3"), again.last_version("never-seen")) == (3, 0)
    assert not any("never-seen" in s for s in statements)  # a name never seen: no query
    model = record()
    model.spec = replace(model.spec, name="new")
    again.save(model)
    assert again.last_version("new") == 3


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (
            "UPDATE replicas SET footprint='{bad' WHERE idx=0",
            "model 'llama3''s copy on 'gpu-0': Expecting",
        ),
        (
            "INSERT INTO replicas VALUES ('gone', 'gpu', 5, 1, 'Available', '', '[]', '{}', 0)",
            "model 'gone''s copy on 'gpu-5': the model has no row",
        ),
    ],
)
def test_a_damaged_copy_row_stops_the_migration_with_one_line(
    tmp_path: Path, damage: str, said: str
) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(_OLD_SCHEMA + _OLD_MODEL)
        db.execute("UPDATE meta SET value='2' WHERE key='schema'")
        db.execute(damage)
        db.commit()
    with pytest.raises(StoreError, match="cannot migrate the state file from schema 2 to 3") as e:
        Store(path)
    assert said in str(e.value) and "nothing was changed" in str(e.value)
    with closing(sqlite3.connect(path)) as db:  # left as it was
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("2",)
        assert db.execute("SELECT count(*) FROM replicas").fetchone()[0] >= 2
