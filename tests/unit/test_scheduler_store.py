"""The state file: what is saved comes back, and a foreign schema is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from scheduler_service.model import (
    CopyState,
    ModelCopy,
    ModelRecord,
    ModelState,
    validate_spec,
)
from scheduler_service.store import Store, StoreError


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
