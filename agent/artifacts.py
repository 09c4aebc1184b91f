"""Model artifacts: fetch a storageUri into the local model repository.

Layout under the repository folder (shared with the inference server):

    <repository>/<model name>/                the model, as the inference server loads it
    <repository>/<model name>/model-settings.json   name = the model's name, parameters.version
    <repository>/<model name>/.gpuplace.json  what the agent measured (footprint), for restarts
    <repository>/.gpuplace-staging/           work area; hidden, so MLServer's
                                              `**/model-settings.json` glob never sees it

An artifact is fetched into the staging area first and renamed into place only when the
model is about to be loaded, so a failed fetch never disturbs a loaded version.

Schemes: a local path or file:// (copied, never moved), http(s):// (one file). A file named
*.tar.gz, *.tgz, *.tar or *.zip is extracted after its members were checked for path
traversal (absolute names, `..`, links that leave the folder, device files).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import posixpath
import shutil
import tarfile
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import aiohttp

from gpuplace.names import check_name

log = logging.getLogger(__name__)

MODEL_SETTINGS = "model-settings.json"
RECORD = ".gpuplace.json"
STAGING = ".gpuplace-staging"
_ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")
# Spec parameters that MLServer reads from model-settings.json `parameters`.
_MLSERVER_PARAMETERS = ("uri", "format", "content_type")


class ArtifactError(Exception):
    """The artifact cannot be fetched, unpacked or described."""


@dataclass(frozen=True)
class Record:
    """What the repository remembers about one installed model."""

    name: str
    version: int
    footprint_bytes: dict[str, int] = field(default_factory=dict)


def model_name(name: str) -> str:
    """The model name, checked before it becomes part of any path."""
    return check_name(name, "model name")


class ModelRepository:
    """The model repository folder. Blocking: call its methods from a worker thread."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.staging = self.root / STAGING

    def prepare(self) -> None:
        """Create the folders and clear what an interrupted agent left in the work area."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir()

    def folder(self, name: str) -> Path:
        return self.root / model_name(name)

    def new_staging_folder(self, name: str) -> Path:
        path = self.staging / f"{model_name(name)}-{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
        return path

    # -- fetching -------------------------------------------------------------------------

    def copy_local(self, source: Path, into: Path) -> None:
        """Copy a local file or folder (never move it) into `into`."""
        if not source.exists():
            raise ArtifactError(f"{source}: no such file or folder")
        if source.is_dir():
            shutil.copytree(source, into, dirs_exist_ok=True)
        else:
            target = into / source.name
            shutil.copy2(source, target)
            self.unpack_if_archive(target)

    def unpack_if_archive(self, path: Path) -> None:
        """Extract `path` in its folder when it is an archive, then delete the archive."""
        lowered = path.name.lower()
        if not lowered.endswith(_ARCHIVES):
            return
        into = path.parent
        if lowered.endswith(".zip"):
            _extract_zip(path, into)
        else:
            _extract_tar(path, into)
        path.unlink()
        _lift_single_folder(into)

    def describe(
        self, folder: Path, name: str, version: int, parameters: Mapping[str, str]
    ) -> None:
        """Make `folder/model-settings.json` name the model and carry its version."""
        path = folder / MODEL_SETTINGS
        if path.exists():
            try:
                settings = json.loads(path.read_text())
            except ValueError as exc:
                raise ArtifactError(f"{MODEL_SETTINGS} in the artifact is not JSON: {exc}") from exc
            if not isinstance(settings, dict):
                raise ArtifactError(f"{MODEL_SETTINGS} in the artifact is not a JSON object")
            if "implementation" not in settings and parameters.get("implementation"):
                settings["implementation"] = parameters["implementation"]
        else:
            implementation = parameters.get("implementation", "")
            if not implementation:
                raise ArtifactError(
                    f"the artifact has no {MODEL_SETTINGS} and the spec's parameters have no "
                    "'implementation' (e.g. mlserver_sklearn.SKLearnModel)"
                )
            settings = {"implementation": implementation, "parameters": {}}
            extra = {}
            for key, value in parameters.items():
                if key == "implementation":
                    continue
                if key in _MLSERVER_PARAMETERS:
                    settings["parameters"][key] = value
                else:
                    extra[key] = value
            if extra:
                settings["parameters"]["extra"] = extra
        settings["name"] = name
        model_parameters = settings.get("parameters")
        if not isinstance(model_parameters, dict):
            model_parameters = {}
        model_parameters["version"] = str(version)
        settings["parameters"] = model_parameters
        path.write_text(json.dumps(settings, indent=2) + "\n")

    # -- installing -----------------------------------------------------------------------

    def install(self, name: str, staged: Path) -> Path | None:
        """Put `staged` in place as the model's folder; return the previous folder, moved
        aside into the work area (for a rollback), or None when there was none."""
        final = self.folder(name)
        aside: Path | None = None
        if final.exists():
            aside = self.staging / f"{name}-previous-{uuid.uuid4().hex[:12]}"
            os.rename(final, aside)
        os.rename(staged, final)
        return aside

    def roll_back(self, name: str, aside: Path | None) -> None:
        """Undo `install`: remove the new folder and put the previous one back."""
        final = self.folder(name)
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        if aside is not None and aside.exists():
            os.rename(aside, final)

    def discard(self, path: Path | None) -> None:
        if path is not None and path.exists():
            shutil.rmtree(path, ignore_errors=True)

    def remove(self, name: str) -> None:
        """Delete the model's folder (after the inference server dropped the model)."""
        final = self.folder(name)
        if final.exists():
            shutil.rmtree(final)

    # -- records --------------------------------------------------------------------------

    def write_record(self, record: Record) -> None:
        path = self.folder(record.name) / RECORD
        body = {"version": record.version, "footprint_bytes": record.footprint_bytes}
        tmp = path.with_name(RECORD + ".tmp")
        tmp.write_text(json.dumps(body) + "\n")
        os.replace(tmp, path)

    def read_record(self, name: str) -> Record | None:
        """The installed version and measured footprint of `name`, or None."""
        folder = self.folder(name)
        version = _settings_version(folder / MODEL_SETTINGS)
        footprint: dict[str, int] = {}
        try:
            body = json.loads((folder / RECORD).read_text())
        except (OSError, ValueError):
            body = None
        if isinstance(body, dict):
            if version is None and isinstance(body.get("version"), int):
                version = body["version"]
            raw = body.get("footprint_bytes")
            if isinstance(raw, dict):
                footprint = {str(k): int(v) for k, v in raw.items() if isinstance(v, int)}
        if version is None:
            return None
        return Record(name=name, version=version, footprint_bytes=footprint)

    def installed(self) -> list[str]:
        """Names of the model folders the agent installed (those carrying a record)."""
        if not self.root.exists():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and (entry / RECORD).exists()
        )


def _settings_version(path: Path) -> int | None:
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(settings, dict):
        return None
    parameters = settings.get("parameters")
    if isinstance(parameters, dict):
        return parse_version(parameters.get("version"))
    return None


def parse_version(value: Any) -> int | None:
    """The integer version the agent writes ("3" → 3); None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _safe_member_name(name: str) -> str | None:
    """Why `name` may not be extracted, or None when it may."""
    if not name or "\x00" in name:
        return "an empty or NUL-carrying name"
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or PurePosixPath(normalised).is_absolute():
        return "an absolute path"
    if len(normalised) > 1 and normalised[1] == ":":
        return "a drive letter"
    if ".." in PurePosixPath(normalised).parts:
        return "a '..' component"
    return None


def _extract_tar(path: Path, into: Path) -> None:
    try:
        archive = tarfile.open(path)  # noqa: SIM115 - closed by the `with` below
    except (tarfile.TarError, OSError) as exc:
        raise ArtifactError(f"{path.name}: not a readable tar archive: {exc}") from exc
    with archive:
        members = archive.getmembers()
        for member in members:
            why = _safe_member_name(member.name)
            if why:
                raise ArtifactError(f"{path.name}: member {member.name!r} has {why}; refused")
            if member.isdev() or member.isfifo():
                raise ArtifactError(f"{path.name}: member {member.name!r} is a device; refused")
            if member.issym() or member.islnk():
                target = member.linkname.replace("\\", "/")
                if posixpath.isabs(target):
                    resolved = target
                elif member.issym():
                    resolved = posixpath.normpath(
                        posixpath.join(posixpath.dirname(member.name), target)
                    )
                else:
                    resolved = posixpath.normpath(target)
                if posixpath.isabs(resolved) or resolved == ".." or resolved.startswith("../"):
                    raise ArtifactError(
                        f"{path.name}: link {member.name!r} -> {member.linkname!r} leaves the "
                        "folder; refused"
                    )
        archive.extractall(into, members=members, filter="data")


def _extract_zip(path: Path, into: Path) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArtifactError(f"{path.name}: not a readable zip archive: {exc}") from exc
    with archive:
        for info in archive.infolist():
            why = _safe_member_name(info.filename)
            if why:
                raise ArtifactError(f"{path.name}: member {info.filename!r} has {why}; refused")
        archive.extractall(into)


def _lift_single_folder(into: Path) -> None:
    """An archive holding one top folder (`model/...`): use that folder's content."""
    entries = list(into.iterdir())
    if len(entries) != 1 or not entries[0].is_dir() or entries[0].is_symlink():
        return
    inner = entries[0]
    if (into / MODEL_SETTINGS).exists():
        return
    holding = into / f".lift-{uuid.uuid4().hex[:8]}"
    os.rename(inner, holding)
    for child in holding.iterdir():
        os.rename(child, into / child.name)
    holding.rmdir()


def _download_name(url: str) -> str:
    name = posixpath.basename(unquote(urlparse(url).path))
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        return "artifact"
    return name


async def fetch(
    repository: ModelRepository, storage_uri: str, into: Path, timeout_s: float
) -> None:
    """Fetch `storage_uri` into the staging folder `into`."""
    uri = storage_uri.strip()
    if not uri:
        raise ArtifactError("the spec has no storageUri")
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        target = into / _download_name(uri)
        await _download(uri, target, timeout_s)
        await asyncio.to_thread(repository.unpack_if_archive, target)
        return
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ArtifactError(f"{uri}: file:// URIs must name a local path")
        source = Path(unquote(parsed.path))
    elif parsed.scheme == "":
        source = Path(uri)
    else:
        raise ArtifactError(
            f"{uri}: scheme {parsed.scheme!r} is not supported (local path, file://, http(s)://)"
        )
    await asyncio.to_thread(repository.copy_local, source, into)


async def _download(url: str, target: Path, timeout_s: float) -> None:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                raise ArtifactError(f"{url}: HTTP {response.status}")
            with target.open("wb") as out:
                async for chunk in response.content.iter_chunked(1 << 20):
                    out.write(chunk)
    except TimeoutError as exc:
        raise ArtifactError(f"{url}: no complete answer within {timeout_s:g}s") from exc
    except aiohttp.ClientError as exc:
        raise ArtifactError(f"{url}: {exc}") from exc
