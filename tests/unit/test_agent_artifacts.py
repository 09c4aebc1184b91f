"""Artifacts: copy, never move; model-settings.json naming and version; archive traversal."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from agent.artifacts import (
    MODEL_SETTINGS,
    ArtifactError,
    ModelRepository,
    Record,
    fetch,
)
from gpuplace.names import InvalidName

SKLEARN = {"implementation": "mlserver_sklearn.SKLearnModel"}


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    repository = ModelRepository(tmp_path / "models")
    repository.prepare()
    return repository


def artifact(tmp_path: Path, settings: dict[str, object] | None = None) -> Path:
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "model.joblib").write_bytes(b"weights")
    (folder / "sub").mkdir()
    (folder / "sub" / "vocab.txt").write_text("a b c")
    if settings is not None:
        (folder / MODEL_SETTINGS).write_text(json.dumps(settings))
    return folder


def settings_of(folder: Path) -> dict[str, object]:
    body = json.loads((folder / MODEL_SETTINGS).read_text())
    assert isinstance(body, dict)
    return body


async def stage(repo: ModelRepository, uri: str, name: str = "iris", version: int = 3) -> Path:
    staged = repo.new_staging_folder(name)
    await fetch(repo, uri, staged, timeout_s=5)
    repo.describe(staged, name, version, SKLEARN)
    return staged


async def test_local_folder_is_copied_not_moved(tmp_path: Path, repo: ModelRepository) -> None:
    source = artifact(tmp_path)
    staged = await stage(repo, str(source))
    assert (source / "model.joblib").read_bytes() == b"weights"
    assert (staged / "model.joblib").read_bytes() == b"weights"
    assert (staged / "sub" / "vocab.txt").read_text() == "a b c"
    assert repo.install("iris", staged) is None
    assert (repo.root / "iris" / "model.joblib").exists()
    assert not staged.exists()


async def test_settings_written_from_spec_when_artifact_has_none(
    tmp_path: Path, repo: ModelRepository
) -> None:
    source = artifact(tmp_path)
    staged = repo.new_staging_folder("iris")
    await fetch(repo, f"file://{source}", staged, timeout_s=5)
    repo.describe(staged, "iris", 7, {**SKLEARN, "uri": "./model.joblib", "team": "ml"})
    assert settings_of(staged) == {
        "implementation": "mlserver_sklearn.SKLearnModel",
        "name": "iris",
        "parameters": {"uri": "./model.joblib", "extra": {"team": "ml"}, "version": "7"},
    }


async def test_settings_in_artifact_get_the_model_name_and_version(
    tmp_path: Path, repo: ModelRepository
) -> None:
    source = artifact(
        tmp_path,
        {"name": "shared-artifact", "implementation": "x.Y", "parameters": {"uri": "./m"}},
    )
    staged = repo.new_staging_folder("iris-b")
    await fetch(repo, str(source), staged, timeout_s=5)
    repo.describe(staged, "iris-b", 2, SKLEARN)
    body = settings_of(staged)
    assert body["name"] == "iris-b"
    assert body["implementation"] == "x.Y"
    assert body["parameters"] == {"uri": "./m", "version": "2"}
    # the source artifact is untouched
    assert settings_of(source)["name"] == "shared-artifact"


async def test_no_settings_and_no_implementation_is_refused(
    tmp_path: Path, repo: ModelRepository
) -> None:
    staged = repo.new_staging_folder("iris")
    await fetch(repo, str(artifact(tmp_path)), staged, timeout_s=5)
    with pytest.raises(ArtifactError, match="implementation"):
        repo.describe(staged, "iris", 1, {})


@pytest.mark.parametrize("name", ["../etc", "Iris", "a/b", "", "x" * 64, "."])
def test_model_names_are_checked_before_any_path(repo: ModelRepository, name: str) -> None:
    with pytest.raises(InvalidName, match="model name"):
        repo.folder(name)
    with pytest.raises(InvalidName):
        repo.new_staging_folder(name)
    assert [p.name for p in repo.root.iterdir()] == [".gpuplace-staging"]


@pytest.mark.parametrize(
    "uri", ["s3://bucket/model", "gs://b/m", "ftp://host/m", "file://otherhost/m"]
)
async def test_unsupported_uris(repo: ModelRepository, uri: str) -> None:
    with pytest.raises(ArtifactError):
        await fetch(repo, uri, repo.new_staging_folder("m"), timeout_s=5)


async def test_missing_local_path(repo: ModelRepository, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no such file"):
        await fetch(repo, str(tmp_path / "absent"), repo.new_staging_folder("m"), timeout_s=5)


def make_tar(path: Path, members: list[tarfile.TarInfo], data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            if member.isfile():
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
            else:
                archive.addfile(member)
    return path


def file_member(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def link_member(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    member.linkname = target
    return member


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([file_member("../evil.txt")], "'..'"),
        ([file_member("model/../../evil.txt")], "'..'"),
        ([file_member("/etc/evil.txt")], "absolute"),
        ([link_member("model/link", "../../outside")], "leaves the folder"),
        ([link_member("link", "/etc/passwd")], "leaves the folder"),
        ([link_member("hard", "../x", hard=True)], "leaves the folder"),
    ],
)
async def test_tar_traversal_is_refused_before_extraction(
    tmp_path: Path, repo: ModelRepository, members: list[tarfile.TarInfo], why: str
) -> None:
    archive = make_tar(tmp_path / "model.tar.gz", [file_member("ok.txt"), *members])
    staged = repo.new_staging_folder("evil")
    with pytest.raises(ArtifactError, match=why):
        await fetch(repo, str(archive), staged, timeout_s=5)
    # nothing was extracted, not even the harmless member
    assert not (staged / "ok.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


async def test_tar_with_one_top_folder_is_lifted(tmp_path: Path, repo: ModelRepository) -> None:
    archive = make_tar(
        tmp_path / "model.tgz",
        [file_member("iris/model.joblib"), file_member("iris/a/b.txt"), link_member("iris/l", "a")],
    )
    staged = await stage(repo, str(archive))
    assert (staged / "model.joblib").read_bytes() == b"x"
    assert (staged / "a" / "b.txt").exists()
    assert not (staged / "model.tgz").exists()
    assert settings_of(staged)["name"] == "iris"


def make_zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, b"z")
    return path


@pytest.mark.parametrize("bad", ["../evil", "/abs/evil", "a/../../evil", "C:/evil"])
async def test_zip_traversal_is_refused(tmp_path: Path, repo: ModelRepository, bad: str) -> None:
    archive = make_zip(tmp_path / "model.zip", ["ok.txt", bad])
    staged = repo.new_staging_folder("evil")
    with pytest.raises(ArtifactError, match="refused"):
        await fetch(repo, str(archive), staged, timeout_s=5)
    assert not (staged / "ok.txt").exists()


async def test_zip_is_extracted(tmp_path: Path, repo: ModelRepository) -> None:
    archive = make_zip(tmp_path / "model.zip", ["model.joblib", "extra/notes.txt"])
    staged = await stage(repo, str(archive))
    assert (staged / "model.joblib").read_bytes() == b"z"
    assert (staged / "extra" / "notes.txt").exists()


async def test_broken_archive(tmp_path: Path, repo: ModelRepository) -> None:
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(ArtifactError, match="not a readable tar"):
        await fetch(repo, str(bad), repo.new_staging_folder("m"), timeout_s=5)


async def test_install_roll_back_and_records(tmp_path: Path, repo: ModelRepository) -> None:
    first = await stage(repo, str(artifact(tmp_path)), version=1)
    repo.install("iris", first)
    repo.write_record(Record("iris", 1, {"GPU-a": 5}))
    assert repo.read_record("iris") == Record("iris", 1, {"GPU-a": 5})
    second = await stage(repo, str(tmp_path / "artifact"), version=2)
    aside = repo.install("iris", second)
    assert aside is not None and aside.exists()
    assert settings_of(repo.root / "iris")["parameters"] == {"version": "2"}
    repo.roll_back("iris", aside)
    assert settings_of(repo.root / "iris")["parameters"] == {"version": "1"}
    assert repo.installed() == ["iris"]
    repo.remove("iris")
    assert repo.installed() == []
    assert repo.read_record("iris") is None


def test_prepare_clears_the_work_area(repo: ModelRepository) -> None:
    left = repo.new_staging_folder("iris")
    (left / "model-settings.json").write_text("{}")
    repo.prepare()
    assert list(repo.staging.iterdir()) == []
