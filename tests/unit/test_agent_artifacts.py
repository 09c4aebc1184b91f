"""Artifacts: copy, never move; model-settings.json naming and version; archive traversal."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from agent.artifacts import (
    MAX_MEMBERS,
    MODEL_SETTINGS,
    ArtifactError,
    ModelRepository,
    Placement,
    Record,
    fetch,
    scheme_label,
)
from contract.names import InvalidName
from contract.redaction import redact

SKLEARN = {"implementation": "mlserver_sklearn.SKLearnModel"}
HUGGINGFACE = {"implementation": "mlserver_huggingface.HuggingFaceRuntime"}
ON_GPU_B = Placement(("GPU-b",), (1,), "cuda:1")


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


def described(
    repo: ModelRepository,
    parameters: dict[str, str],
    placement: Placement | None,
    settings: dict[str, object] | None = None,
) -> dict[str, object]:
    staged = repo.new_staging_folder("llm")
    if settings is not None:
        (staged / MODEL_SETTINGS).write_text(json.dumps(settings))
    repo.describe(staged, "llm", 4, parameters, placement)
    return settings_of(staged)


def test_the_huggingface_runtime_is_told_the_placed_device(repo: ModelRepository) -> None:
    body = described(repo, {**HUGGINGFACE, "task": "text-generation"}, ON_GPU_B)
    assert body["parameters"] == {
        "extra": {
            "task": "text-generation",
            "device": "cuda:1",
            "gpuplace": {"device_uuids": ["GPU-b"], "cuda_ordinals": [1]},
        },
        "version": "4",
    }


@pytest.mark.parametrize(
    ("parameters", "settings"),
    [
        ({**HUGGINGFACE, "device": "cuda:0"}, None),  # the spec's choice
        (  # the artifact's choice
            {},
            {
                "implementation": HUGGINGFACE["implementation"],
                "parameters": {"extra": {"device": 0}},
            },
        ),
    ],
)
def test_the_placement_wins_over_a_device_set_by_hand(
    repo: ModelRepository, parameters: dict[str, str], settings: dict[str, object] | None
) -> None:
    body = described(repo, parameters, ON_GPU_B, settings)
    parameters_out = body["parameters"]
    assert isinstance(parameters_out, dict)
    assert parameters_out["extra"]["device"] == "cuda:1"


def test_every_runtime_gets_the_placement_in_extra_beside_its_own_keys(
    repo: ModelRepository,
) -> None:
    settings = {
        "implementation": "my_runtime.Custom",
        "parameters": {"uri": "./w", "extra": {"batch": 8, "device": "cuda:3"}},
    }
    two = Placement(("GPU-a", "MIG-c"), (0, "MIG-c"))
    body = described(repo, {}, two, settings)
    assert body["parameters"] == {
        "uri": "./w",
        "extra": {
            "batch": 8,
            "device": "cuda:3",  # not a runtime known to take a device: left as it was
            "gpuplace": {"device_uuids": ["GPU-a", "MIG-c"], "cuda_ordinals": [0, "MIG-c"]},
        },
        "version": "4",
    }


def test_a_huggingface_model_on_several_devices_keeps_its_device(
    repo: ModelRepository,
) -> None:
    two = Placement(("GPU-a", "GPU-b"), (0, 1))
    body = described(repo, {**HUGGINGFACE, "device": "cpu"}, two)
    parameters = body["parameters"]
    assert isinstance(parameters, dict)
    assert parameters["extra"]["device"] == "cpu"
    assert parameters["extra"]["gpuplace"]["cuda_ordinals"] == [0, 1]


def test_a_cpu_model_gets_nothing_new(repo: ModelRepository) -> None:
    body = described(repo, {**HUGGINGFACE, "task": "fill-mask"}, None)
    assert body["parameters"] == {"extra": {"task": "fill-mask"}, "version": "4"}


def test_an_extra_that_is_not_an_object_is_refused_for_a_placed_model(
    repo: ModelRepository,
) -> None:
    settings = {"implementation": "x.Y", "parameters": {"extra": ["no"]}}
    assert described(repo, {}, None, settings)["parameters"] == {"extra": ["no"], "version": "4"}
    with pytest.raises(ArtifactError, match=r"parameters\.extra is not a JSON object"):
        described(repo, {}, ON_GPU_B, settings)


@pytest.mark.parametrize("name", ["../etc", "Iris", "a/b", "", "x" * 64, "."])
def test_model_names_are_checked_before_any_path(repo: ModelRepository, name: str) -> None:
    with pytest.raises(InvalidName, match="model name"):
        repo.folder(name)
    with pytest.raises(InvalidName):
        repo.new_staging_folder(name)
    assert [p.name for p in repo.root.iterdir()] == [".gpuplace-staging"]


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("ftp://host/m", "scheme 'ftp' is not supported"),
        ("file://otherhost/m", "must name a local path"),
        ("minio://bucket/m", "scheme 'minio' is not supported"),  # a remote, but no secret
        ("s3://user:pw@bucket/m", "carries no user, password or port"),
        ("gs://bucket:443/m", "carries no user, password or port"),
        ("az://container/m?sv=1", "takes no query string"),
    ],
)
async def test_unsupported_uris(repo: ModelRepository, uri: str, why: str) -> None:
    with pytest.raises(ArtifactError, match=why):
        await fetch(repo, uri, repo.new_staging_folder("m"), timeout_s=5)


async def test_a_local_fetch_returns_its_size(tmp_path: Path, repo: ModelRepository) -> None:
    source = artifact(tmp_path)
    assert await fetch(repo, str(source), repo.new_staging_folder("m"), timeout_s=5) == 12
    single = repo.new_staging_folder("m")
    assert await fetch(repo, str(source / "model.joblib"), single, timeout_s=5) == 7


@pytest.mark.parametrize(
    ("uri", "label"),
    [
        ("/models/iris", "local"),
        ("file:///models/iris", "local"),
        ("https://host/m.tgz", "http"),
        ("HTTP://host/m.tgz", "http"),
        ("s3://b/k", "s3"),
        ("gs://b/k", "gs"),
        ("gcs://b/k", "gs"),
        ("az://c/k", "azure"),
        ("azureblob://c/k", "azure"),
        ("minio://b/k", "remote"),
        ("http://[::1", "remote"),
    ],
)
def test_scheme_labels_are_a_small_fixed_set(uri: str, label: str) -> None:
    assert scheme_label(uri) == label


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
        ([link_member("model/link", "../../outside")], "links are refused"),
        ([link_member("link", "/etc/passwd")], "links are refused"),
        # even a symbolic link that stays inside: CVE-2025-4517 chains such links
        ([file_member("a/b.txt"), link_member("l", "a")], "links are refused"),
        ([link_member("hard", "../x", hard=True)], "leaves the folder"),
        ([link_member("hard", "/etc/passwd", hard=True)], "leaves the folder"),
        # a hard link to a file the archive does not hold earlier (one already on disk)
        ([link_member("hard", "later.txt", hard=True), file_member("later.txt")], "no earlier"),
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
        [
            file_member("iris/model.joblib"),
            file_member("iris/a/b.txt"),
            link_member("iris/copy.joblib", "iris/model.joblib", hard=True),
        ],
    )
    staged = await stage(repo, str(archive))
    assert (staged / "model.joblib").read_bytes() == b"x"
    assert (staged / "a" / "b.txt").exists()
    assert (staged / "copy.joblib").read_bytes() == b"x"
    assert not (staged / "copy.joblib").is_symlink()
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


def _tar_escape_chain(staged: Path) -> Path:
    """The CVE-2025-4517 chain (the data filter of Python <= 3.11.13 checks link targets
    lexically; symlinks with PATH_MAX-long names make the real path differ)."""
    archive = staged / "model.tar"
    steps = "abcdefghijklmnop"
    max_path = os.pathconf(staged, "PC_PATH_MAX")
    comp = "d" * ((max_path - len(str(staged)) - 1) // (len(steps) + 1))

    def add(
        tar: tarfile.TarFile, name: str, kind: bytes, link: str = "", data: bytes = b""
    ) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        if kind == tarfile.DIRTYPE:
            info.mode = 0o777
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if data else None)

    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        path = ""
        for step in steps:
            add(tar, os.path.join(path, comp), tarfile.DIRTYPE)
            add(tar, os.path.join(path, step), tarfile.SYMTYPE, comp)
            path = os.path.join(path, comp)
        linkpath = os.path.join(*steps, "l" * 254)
        add(tar, linkpath, tarfile.SYMTYPE, os.path.join(*[".."] * len(steps)))
        add(tar, "escape", tarfile.SYMTYPE, os.path.join(linkpath, "..", "..", ".."))
        add(tar, "escape/pwned.txt", tarfile.REGTYPE, data=b"outside\n")
    return archive


def test_symlink_chain_cannot_write_outside(repo: ModelRepository) -> None:
    staged = repo.new_staging_folder("m")
    archive = _tar_escape_chain(staged)
    with pytest.raises(ArtifactError, match="links are refused"):
        repo.unpack_if_archive(archive)
    assert not list(repo.root.rglob("pwned.txt"))


def test_tar_errors_become_artifact_errors(tmp_path: Path, repo: ModelRepository) -> None:
    good = make_tar(tmp_path / "model.tar.gz", [file_member("a.txt"), file_member("b.txt")])
    staged = repo.new_staging_folder("m")
    truncated = staged / "model.tar.gz"
    truncated.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(ArtifactError, match=r"model\.tar\.gz"):
        repo.unpack_if_archive(truncated)


def test_tar_special_files_are_refused(tmp_path: Path, repo: ModelRepository) -> None:
    fifo = tarfile.TarInfo("pipe")
    fifo.type = tarfile.FIFOTYPE
    staged = repo.new_staging_folder("m")
    archive = make_tar(staged / "model.tar.gz", [fifo])
    with pytest.raises(ArtifactError, match="special file"):
        repo.unpack_if_archive(archive)


def test_zip_symlink_entries_are_refused(repo: ModelRepository) -> None:
    staged = repo.new_staging_folder("m")
    archive = staged / "model.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("ok.txt", b"z")
        link = zipfile.ZipInfo("link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        out.writestr(link, "/etc")
    with pytest.raises(ArtifactError, match="links are refused"):
        repo.unpack_if_archive(archive)
    assert not (staged / "ok.txt").exists()
    assert not (staged / "link").exists()


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_archives_larger_than_the_limit_are_refused(tmp_path: Path, kind: str) -> None:
    repo = ModelRepository(tmp_path / "models", max_artifact_bytes=1000)
    repo.prepare()
    staged = repo.new_staging_folder("m")
    if kind == "tar":
        archive = make_tar(
            staged / "model.tar.gz", [file_member("a"), file_member("b")], data=b"0" * 600
        )
    else:
        archive = staged / "model.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
            out.writestr("a", b"0" * 600)
            out.writestr("b", b"0" * 600)
    assert archive.stat().st_size < 1000
    with pytest.raises(ArtifactError, match="max_artifact_bytes"):
        repo.unpack_if_archive(archive)
    assert not (staged / "a").exists()


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_archives_with_too_many_members_are_refused_before_any_is_written(
    tmp_path: Path, kind: str
) -> None:
    repo = ModelRepository(tmp_path / "models")
    repo.prepare()
    staged = repo.new_staging_folder("m")
    names = [f"f{number}" for number in range(MAX_MEMBERS + 1)]
    if kind == "tar":
        archive = make_tar(staged / "model.tar", [file_member(name) for name in names], data=b"")
    else:
        archive = staged / "model.zip"
        with zipfile.ZipFile(archive, "w") as out:
            for name in names:
                out.writestr(name, b"")
    with pytest.raises(ArtifactError, match="more than 10,000 members"):
        repo.unpack_if_archive(archive)
    assert not (staged / "f0").exists()


async def test_local_copies_larger_than_the_limit_are_refused(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "models", max_artifact_bytes=5)
    repo.prepare()
    source = artifact(tmp_path)
    with pytest.raises(ArtifactError, match="max_artifact_bytes"):
        await fetch(repo, str(source), repo.new_staging_folder("m"), timeout_s=5)


@pytest.mark.parametrize("where", ["sub/model-settings.json", "a/b/model-settings.json"])
async def test_nested_model_settings_are_refused(
    tmp_path: Path, repo: ModelRepository, where: str
) -> None:
    source = artifact(tmp_path, {"implementation": "x"})
    nested = source / where
    nested.parent.mkdir(parents=True, exist_ok=True)
    nested.write_text(json.dumps({"name": "someone-else", "implementation": "x"}))
    with pytest.raises(ArtifactError, match="below the top level"):
        await stage(repo, str(source))


async def test_nested_model_settings_in_a_lifted_archive_are_refused(
    tmp_path: Path, repo: ModelRepository
) -> None:
    archive = make_tar(
        tmp_path / "model.tgz",
        [file_member("iris/model-settings.json"), file_member("iris/x/model-settings.json")],
        data=b"{}",
    )
    with pytest.raises(ArtifactError, match=r"x/model-settings\.json"):
        await stage(repo, str(archive))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://alice:s3cr3t@host:8/m.tar.gz?X-Amz-Signature=dead", "http://host:8/m.tar.gz"),
        ("https://host/m.zip?token=abc#frag", "https://host/m.zip"),
        ("s3://key:secret@bucket/path", "s3://bucket/path"),
        ("/local/path?odd", "/local/path?odd"),
        ("file:///models/iris", "file:///models/iris"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    "uri", ["ftp://key:hunter2@host/m?sig=abc", "s3://key:hunter2@bucket/m?sig=abc"]
)
async def test_unsupported_uri_messages_are_redacted(repo: ModelRepository, uri: str) -> None:
    with pytest.raises(ArtifactError) as caught:
        await fetch(repo, uri, repo.new_staging_folder("m"), 5)
    assert "hunter2" not in str(caught.value) and "sig=abc" not in str(caught.value)


def tree(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def artifact_with_versions(repo: ModelRepository, *versions: str, top: bool = False) -> Path:
    folder = repo.new_staging_folder("m")
    for version in versions:
        (folder / version).mkdir()
        (folder / version / "model-settings.json").write_text("{}")
        (folder / version / "model.joblib").write_text(version)
    (folder / "README").write_text("about")
    if top:
        (folder / "model-settings.json").write_text("{}")
    return folder


@pytest.mark.parametrize(
    ("versions", "artifact_version", "kept"),
    [
        (("1", "2", "10"), 2, "2"),  # the folder artifactVersion names
        (("0", "3"), 0, "0"),  # 0 is a version like any other
        (("1", "2", "10"), None, "10"),  # none named: the highest version
        (("1", "02", "²"), None, "1"),  # only names written as the number count
    ],
)
def test_a_numbered_version_folder_becomes_the_model(
    repo: ModelRepository, versions: tuple[str, ...], artifact_version: int | None, kept: str
) -> None:
    folder = artifact_with_versions(repo, *versions)
    repo.select_version(folder, artifact_version)
    assert tree(folder) == ["model-settings.json", "model.joblib"]
    assert (folder / "model.joblib").read_text() == kept


def test_an_artifact_described_at_its_top_is_used_as_it_is(repo: ModelRepository) -> None:
    folder = artifact_with_versions(repo, "1", top=True)
    before = tree(folder)
    repo.select_version(folder, 1)
    assert tree(folder) == before


def test_an_artifact_without_version_folders_is_used_as_it_is(repo: ModelRepository) -> None:
    folder = artifact_with_versions(repo)
    repo.select_version(folder, None)
    assert tree(folder) == ["README"]


def test_a_missing_artifact_version_names_the_versions_there_are(repo: ModelRepository) -> None:
    folder = artifact_with_versions(repo, "1", "2")
    with pytest.raises(
        ArtifactError, match=r"artifactVersion 3: .* no folder 3/ \(it has 1/, 2/\)"
    ):
        repo.select_version(folder, 3)


def test_a_local_source_may_not_read_a_private_folder(tmp_path: Path) -> None:
    """The storage secrets mounted into the agent must never become a model's files, which
    the inference server and every model's code can read."""
    secrets = tmp_path / "storage-secrets"
    (secrets / "minio").mkdir(parents=True)
    (secrets / "minio" / "conf").write_text("secret_access_key: hunter2")
    repository = ModelRepository(tmp_path / "models", private=(secrets,))
    repository.prepare()
    for source in (secrets, secrets / "minio", secrets / "minio" / "conf", tmp_path):
        staged = repository.new_staging_folder("m")
        with pytest.raises(ArtifactError, match=r"may not read .* \(it holds secrets"):
            repository.copy_local(source, staged)
        assert tree(staged) == []


def test_a_local_folder_with_a_link_out_of_it_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere" / "token"
    secret.parent.mkdir()
    secret.write_text("hunter2")
    source = tmp_path / "artifact"
    (source / "inner").mkdir(parents=True)
    (source / "model.joblib").write_text("weights")
    (source / "inner" / "same").symlink_to(source / "model.joblib")  # inside: fine
    repository = ModelRepository(tmp_path / "models", private=())
    repository.prepare()
    staged = repository.new_staging_folder("m")
    repository.copy_local(source, staged)
    assert tree(staged) == ["inner/same", "model.joblib"]
    (source / "inner" / "token").symlink_to(secret)
    staged = repository.new_staging_folder("m")
    with pytest.raises(ArtifactError, match=r"inner/token is a symbolic link out of the artifact"):
        repository.copy_local(source, staged)
    assert tree(staged) == []


@pytest.mark.parametrize("source", ["/proc/self/environ", "/proc", "/dev/zero", "/etc/passwd", "/"])
def test_a_local_source_may_not_read_system_folders(tmp_path: Path, source: str) -> None:
    repository = ModelRepository(tmp_path / "models", private=())
    repository.prepare()
    staged = repository.new_staging_folder("m")
    with pytest.raises(ArtifactError, match="may not read"):
        repository.copy_local(Path(source), staged)
    assert tree(staged) == []


def test_a_local_source_may_not_copy_the_model_repository(repo: ModelRepository) -> None:
    other = repo.root / "other"
    other.mkdir()
    (other / "model.joblib").write_text("another model's weights")
    staged = repo.new_staging_folder("m")
    with pytest.raises(ArtifactError, match=r"may not read .* other models"):
        repo.copy_local(other, staged)


def test_local_roots_limit_where_a_local_source_may_read(tmp_path: Path) -> None:
    volume, elsewhere = tmp_path / "volume", tmp_path / "elsewhere"
    for folder in (volume / "iris", elsewhere):
        folder.mkdir(parents=True)
        (folder / "model.joblib").write_text("weights")
    repository = ModelRepository(tmp_path / "models", private=(), local_roots=(volume,))
    repository.prepare()
    assert repository.copy_local(volume / "iris", repository.new_staging_folder("m")) == 7
    with pytest.raises(ArtifactError, match="must be below a local artifact root"):
        repository.copy_local(elsewhere, repository.new_staging_folder("m"))
    nothing = ModelRepository(tmp_path / "models", private=(), local_roots=())
    with pytest.raises(ArtifactError, match=r"none \(local_artifact_roots\)"):
        nothing.copy_local(volume / "iris", repository.new_staging_folder("m"))


def test_a_link_loop_is_copied_as_a_link_never_followed(tmp_path: Path) -> None:
    """Two links to '.' once made the copy grow without end."""
    source = tmp_path / "artifact"
    source.mkdir()
    (source / "model.joblib").write_text("w")
    (source / "x").symlink_to(".")
    (source / "y").symlink_to(".")
    repository = ModelRepository(tmp_path / "models", private=())
    repository.prepare()
    staged = repository.new_staging_folder("m")
    assert repository.copy_local(source, staged) == 1
    assert sorted(p.name for p in staged.iterdir()) == ["model.joblib", "x", "y"]
    assert (staged / "x").is_symlink()


def test_the_size_limit_counts_the_bytes_copied(tmp_path: Path) -> None:
    source = tmp_path / "artifact"
    source.mkdir()
    (source / "a").write_bytes(b"x" * 700)
    (source / "b").write_bytes(b"x" * 700)
    repository = ModelRepository(tmp_path / "models", max_artifact_bytes=1000, private=())
    repository.prepare()
    with pytest.raises(ArtifactError, match="max_artifact_bytes"):
        repository.copy_local(source, repository.new_staging_folder("m"))


def test_a_fifo_is_not_an_artifact(tmp_path: Path) -> None:
    source = tmp_path / "artifact"
    source.mkdir()
    os.mkfifo(source / "pipe")
    repository = ModelRepository(tmp_path / "models", private=())
    repository.prepare()
    with pytest.raises(ArtifactError, match="not a regular file"):
        repository.copy_local(source, repository.new_staging_folder("m"))
    with pytest.raises(ArtifactError, match="not a regular file"):
        repository.copy_local(source / "pipe", repository.new_staging_folder("m"))
