"""Model artifacts: fetch a storageUri into the local model repository.

Layout under the repository folder (shared with the inference server):

    <repository>/<model name>/                the model, as the inference server loads it
    <repository>/<model name>/model-settings.json   name = the model's name, parameters.version
    <repository>/<model name>/.gpuplace.json  what the agent measured (footprint), for restarts
    <repository>/.gpuplace-staging/           work area; hidden, so MLServer's
                                              `**/model-settings.json` glob never sees it

An artifact is fetched into the staging area first and renamed into place only when the
model is about to be loaded, so a failed fetch never disturbs a loaded version.

Schemes: a local path or file:// (copied, never moved), http(s):// (one file), and the
object stores gs:// (gcs://), s3:// and az:// (azureblob://), or the name of the rclone
remote a spec.secretName defines (`agent.storage`: one object, or every object under a
prefix). A file named *.tar.gz, *.tgz, *.tar or *.zip is extracted after its members were
checked (absolute names, `..`, any symbolic link, hard links other than to an earlier file,
special files, the total size), member by member, each resolved path checked to stay inside
the folder. Every message that shows a URI shows it through `redact` (no user:password, no
query string).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import posixpath
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote, urlparse, urlsplit

import aiohttp

from agent.storage import ObjectStores, Progress
from agent.storage_config import METRIC_LABELS, SCHEME_FAMILIES, StorageError
from contract.logs import log_fields
from contract.names import check_name
from contract.quantity import format_bytes
from contract.redaction import redact, scrub_uri

log = logging.getLogger(__name__)

MODEL_SETTINGS = "model-settings.json"
RECORD = ".gpuplace.json"
STAGING = ".gpuplace-staging"
_ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")
# The default of the max_artifact_bytes setting.
DEFAULT_MAX_ARTIFACT_BYTES = 50 * 2**30
# Where Kubernetes puts secrets in a pod; the agent's storage secrets folder is added too.
PRIVATE_FOLDERS = (Path("/var/run/secrets"), Path("/run/secrets"))
# What a local storageUri never reads: the kernel's views, devices, the system's settings.
SYSTEM_FOLDERS = tuple(
    Path(p) for p in ("/proc", "/sys", "/dev", "/etc", "/run", "/var/run", "/boot")
)
# Spec parameters that MLServer reads from model-settings.json `parameters`.
_MLSERVER_PARAMETERS = ("uri", "format", "content_type")
# The key of `parameters.extra` that carries the placement, for every runtime.
PLACEMENT_KEY = "gpuplace"
# Runtimes that take the device to load on from `parameters.extra.device` (a torch device
# such as "cuda:1"): MLServer's HuggingFace runtime. The placement sets it.
DEVICE_RUNTIMES = frozenset(
    {
        "mlserver_huggingface.HuggingFaceRuntime",
        "mlserver_huggingface.runtime.HuggingFaceRuntime",
    }
)


class ArtifactError(Exception):
    """The artifact cannot be fetched, unpacked or described."""


@dataclass(frozen=True)
class Record:
    """What the repository remembers about one installed model."""

    name: str
    version: int
    footprint_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """The devices the scheduler placed a model on, as the inference container names them.

    `cuda_ordinals[i]` goes with `device_uuids[i]`: the CUDA ordinal of that GPU in the
    inference container (`CUDA_DEVICE_ORDER=PCI_BUS_ID`), or, for a MIG instance, its MIG
    UUID (what `CUDA_VISIBLE_DEVICES` takes; CUDA gives MIG instances no ordinal to rely on).
    `device`: the torch device a runtime that takes one loads on ("cuda:1"), or "" when no
    single device fits (the model spans several, or a MIG instance among other devices).
    """

    device_uuids: tuple[str, ...]
    cuda_ordinals: tuple[int | str, ...]
    device: str = ""

    def extra(self) -> dict[str, Any]:
        """The value of `parameters.extra.gpuplace` in model-settings.json."""
        return {"device_uuids": list(self.device_uuids), "cuda_ordinals": list(self.cuda_ordinals)}


def model_name(name: str) -> str:
    """The model name, checked before it becomes part of any path."""
    return check_name(name, "model name")


class ModelRepository:
    """The model repository folder. Blocking: call its methods from a worker thread."""

    def __init__(
        self,
        root: Path,
        max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
        private: tuple[Path, ...] = PRIVATE_FOLDERS,
        local_roots: tuple[Path, ...] | None = None,
    ) -> None:
        self.root = root.resolve()
        self.staging = self.root / STAGING
        # The most an artifact may take: downloaded, copied, or extracted from an archive.
        self.max_artifact_bytes = max_artifact_bytes
        # Folders a local storageUri may never copy from (or link into): they hold secrets,
        # and the model repository is readable by the inference server and every model.
        # The repository itself is one: a model must not copy another's files.
        self.private = (*(path.resolve() for path in private), self.root)
        # Where a local storageUri may read: None: anywhere but the private and system
        # folders (a developer's machine); a tuple: only below these (a pod: its volumes).
        self.local_roots = (
            None if local_roots is None else tuple(path.resolve() for path in local_roots)
        )

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

    def copy_local(self, source: Path, into: Path) -> int:
        """Copy a local file or folder (never move it) into `into`; the bytes copied.

        Refused: a source outside the local roots (when set), in or above a private folder
        (the storage secrets, the pod's service-account token, the model repository) or a
        system folder (/proc, /sys, /dev, /etc, ...); anything but regular files, folders
        and links that stay inside the folder. The bytes are counted while they are copied
        (a file may grow, or lie about its size), and links are copied as links.
        """
        if not source.exists():
            raise ArtifactError(f"{source}: no such file or folder")
        real = source.resolve()
        self._check_readable(source, real)
        budget = _Budget(str(source), self.max_artifact_bytes)
        try:
            if real.is_dir():
                _check_links_stay_inside(source, real)
                _copy_tree(real, into, budget)
                return budget.used
            if not real.is_file():
                raise ArtifactError(f"{source}: not a regular file or folder; refused")
            target = into / source.name
            _copy_file(real, target, budget)
        except OSError as exc:
            raise ArtifactError(f"{source}: cannot be copied: {exc.strerror or exc}") from exc
        self.unpack_if_archive(target)
        return budget.used

    def _check_readable(self, source: Path, real: Path) -> None:
        if self.local_roots is not None and not any(
            real == root or root in real.parents for root in self.local_roots
        ):
            allowed = ", ".join(map(str, self.local_roots)) or "none (local_artifact_roots)"
            raise ArtifactError(
                f"{source}: a local storageUri must be below a local artifact root "
                f"({allowed}); refused"
            )
        for private in self.private:
            if real == private or private in real.parents or real in private.parents:
                raise ArtifactError(
                    f"{source}: a local storageUri may not read {private} (it holds secrets "
                    "or other models); refused"
                )
        for system in SYSTEM_FOLDERS:
            if real == system or system in real.parents or real in system.parents:
                raise ArtifactError(
                    f"{source}: a local storageUri may not read the system folder {system}; refused"
                )

    def _check_size(self, what: str, size: int) -> None:
        if size > self.max_artifact_bytes:
            raise ArtifactError(
                f"{what}: {format_bytes(size)} is more than the "
                f"{format_bytes(self.max_artifact_bytes)} an artifact may have "
                "(max_artifact_bytes); refused"
            )

    def unpack_if_archive(self, path: Path) -> None:
        """Extract `path` in its folder when it is an archive, then delete the archive."""
        lowered = path.name.lower()
        if not lowered.endswith(_ARCHIVES):
            return
        into = path.parent
        if lowered.endswith(".zip"):
            _extract_zip(path, into, self.max_artifact_bytes)
        else:
            _extract_tar(path, into, self.max_artifact_bytes)
        path.unlink()
        _lift_single_folder(into)

    def select_version(self, folder: Path, artifact_version: int | None) -> None:
        """Keep one numbered version folder of the artifact, as Seldon Core 2 does.

        An artifact with a model-settings.json at its top is used as it is. Otherwise, with
        an artifactVersion N, its folder `N/` becomes the model folder (none: an error naming
        the versions there are); without one, the highest-numbered folder that holds a
        model-settings.json does, if any.
        """
        if (folder / MODEL_SETTINGS).exists():
            return
        numbered = {
            int(child.name): child
            for child in folder.iterdir()
            if _is_version(child.name) and child.is_dir() and not child.is_symlink()
        }
        if artifact_version is not None:
            chosen = numbered.get(artifact_version)
            if chosen is None:
                found = ", ".join(f"{n}/" for n in sorted(numbered)) or "no numbered folder"
                raise ArtifactError(
                    f"artifactVersion {artifact_version}: the artifact has no folder "
                    f"{artifact_version}/ (it has {found})"
                )
        else:
            described = [n for n, child in numbered.items() if (child / MODEL_SETTINGS).exists()]
            if not described:
                return
            chosen = numbered[max(described)]
        _keep_only(folder, chosen)

    def describe(
        self,
        folder: Path,
        name: str,
        version: int,
        parameters: Mapping[str, str],
        placement: Placement | None = None,
    ) -> None:
        """Make `folder/model-settings.json` name the model and carry its version, and the
        devices it was placed on (`placement`; None: a CPU model, nothing is added).

        A model-settings.json below the top level is refused: MLServer searches the whole
        repository for them, so one could load (or replace) a model under any other name.
        """
        for parent, _folders, names in os.walk(folder):
            if MODEL_SETTINGS in names and Path(parent) != folder:
                nested = Path(parent, MODEL_SETTINGS).relative_to(folder)
                raise ArtifactError(
                    f"the artifact holds {nested}: a {MODEL_SETTINGS} below the top level "
                    "would let MLServer load it as another model; refused"
                )
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
                    f"nothing to load: no {MODEL_SETTINGS} in the artifact (or no storageUri) "
                    "and no 'implementation' in the spec's parameters "
                    "(e.g. mlserver_sklearn.SKLearnModel)"
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
        if placement is not None:
            _place(settings, model_parameters, placement, name)
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

    def settle(self, record: Record, aside: Path | None) -> None:
        """A load went well: write its record, and drop the folder it replaced."""
        self.write_record(record)
        self.discard(aside)

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


def _place(
    settings: dict[str, Any], parameters: dict[str, Any], placement: Placement, name: str
) -> None:
    """Write `placement` into `parameters.extra` (other keys kept): `gpuplace` for every
    runtime, and `device` for a runtime that takes one, replacing whatever the spec or the
    artifact set there (the scheduler's placement wins: its ledger counts the memory there)."""
    extra = parameters.get("extra")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise ArtifactError(
            f"{MODEL_SETTINGS}: parameters.extra is not a JSON object; "
            "the devices the model was placed on cannot be written into it"
        )
    extra[PLACEMENT_KEY] = placement.extra()
    if placement.device and settings.get("implementation") in DEVICE_RUNTIMES:
        chosen = extra.get("device")
        if chosen not in (None, "", placement.device):
            log.info(
                "model %s: device %r of its settings replaced by %s, where it was placed (%s)",
                name,
                chosen,
                placement.device,
                ", ".join(placement.device_uuids),
                extra=log_fields(model=name),
            )
        extra["device"] = placement.device
    parameters["extra"] = extra


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


def _member_parts(name: str) -> tuple[str, ...]:
    """The path components of a checked member name (`./a//b/` → ("a", "b"))."""
    return tuple(
        part for part in PurePosixPath(name.replace("\\", "/")).parts if part not in ("", ".")
    )


def _inside(root: str, path: str) -> bool:
    """Whether `path`, with every link resolved, is `root` or below it."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


# Members an archive may have: a model is a few files to a few thousand (100,000 empty files
# took 78 s to unpack, and as long to remove again).
MAX_MEMBERS = 10_000


def _check_count(archive: str, count: int) -> None:
    if count > MAX_MEMBERS:
        raise ArtifactError(
            f"{archive}: more than {MAX_MEMBERS:,} members; an artifact may have at most "
            f"{MAX_MEMBERS:,}; refused"
        )


def _bounded_members(archive_name: str, archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The tar's members, read one header at a time and refused past MAX_MEMBERS (a tar has
    no index: getmembers() would read them all first)."""
    members: list[tarfile.TarInfo] = []
    for member in archive:
        members.append(member)
        _check_count(archive_name, len(members))
    return members


def _check_total(archive: str, total: int, limit: int) -> None:
    if total > limit:
        raise ArtifactError(
            f"{archive}: its members hold {format_bytes(total)}, more than the "
            f"{format_bytes(limit)} an artifact may have (max_artifact_bytes); refused"
        )


def _target(root: str, archive: str, parts: tuple[str, ...], shown: str) -> str:
    """The path a member is written to, refused when it resolves outside `root`."""
    path = os.path.join(root, *parts)
    if not _inside(root, path) or os.path.islink(path):
        raise ArtifactError(f"{archive}: member {shown!r} resolves outside the folder; refused")
    return path


def _write_file(source: IO[bytes], path: str, mode: int) -> None:
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            raise ArtifactError(f"{os.path.basename(path)}: a file and a folder share this name")
        os.unlink(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o755 if mode & 0o111 else 0o644)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


def _make_folder(root: str, archive: str, path: str, shown: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)
    if not _inside(root, path):
        raise ArtifactError(f"{archive}: member {shown!r} resolves outside the folder; refused")


# What can go wrong reading a damaged or hostile archive, beyond ArtifactError.
_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    RuntimeError,
    NotImplementedError,
)


def _extract_tar(path: Path, into: Path, limit: int) -> None:
    """Extract a tar archive member by member, without trusting tarfile's filters.

    Every member is checked before anything is written: no absolute name, no `..`, no
    symbolic link at all, no device, FIFO or other special file, hard links only to a
    regular file of the same archive that comes earlier, and a total size within `limit`.
    Each member is then written with its resolved path checked to stay inside `into`.
    """
    try:
        archive = tarfile.open(path)  # noqa: SIM115 - closed by the `with` below
    except _ARCHIVE_ERRORS as exc:
        raise ArtifactError(f"{path.name}: not a readable tar archive: {exc}") from exc
    try:
        with archive:
            members = _bounded_members(path.name, archive)
            files: set[tuple[str, ...]] = set()
            total = 0
            for member in members:
                why = _safe_member_name(member.name)
                if why:
                    raise ArtifactError(f"{path.name}: member {member.name!r} has {why}; refused")
                parts = _member_parts(member.name)
                if member.issym():
                    raise ArtifactError(
                        f"{path.name}: member {member.name!r} is a symbolic link "
                        f"(-> {member.linkname!r}); links are refused"
                    )
                if member.islnk():
                    linked = _member_parts(member.linkname)
                    if _safe_member_name(member.linkname) or linked not in files:
                        raise ArtifactError(
                            f"{path.name}: hard link {member.name!r} -> {member.linkname!r} "
                            "leaves the folder or names no earlier file of the archive; refused"
                        )
                    files.add(parts)
                elif member.isreg():
                    total += max(0, member.size)
                    files.add(parts)
                elif not member.isdir():
                    raise ArtifactError(
                        f"{path.name}: member {member.name!r} is a device or special file; refused"
                    )
                if not parts and not member.isdir():
                    raise ArtifactError(f"{path.name}: member {member.name!r} has no name; refused")
            _check_total(path.name, total, limit)
            root = os.path.realpath(into)
            for member in members:
                parts = _member_parts(member.name)
                if not parts:
                    continue
                target = _target(root, path.name, parts, member.name)
                if member.isdir():
                    _make_folder(root, path.name, target, member.name)
                    continue
                _make_folder(root, path.name, os.path.dirname(target), member.name)
                if member.islnk():
                    source = _target(root, path.name, _member_parts(member.linkname), member.name)
                    if not os.path.isfile(source) or os.path.islink(source):
                        raise ArtifactError(
                            f"{path.name}: hard link {member.name!r} -> {member.linkname!r} "
                            "names no extracted file; refused"
                        )
                    if os.path.lexists(target):
                        os.unlink(target)
                    os.link(source, target)
                    continue
                data = archive.extractfile(member)
                if data is None:
                    raise ArtifactError(f"{path.name}: member {member.name!r} has no data")
                with data:
                    _write_file(data, target, member.mode)
    except ArtifactError:
        raise
    except _ARCHIVE_ERRORS as exc:
        raise ArtifactError(f"{path.name}: cannot extract the tar archive: {exc}") from exc


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _extract_zip(path: Path, into: Path, limit: int) -> None:
    """Extract a zip archive after checking every entry (as `_extract_tar` does)."""
    try:
        archive = zipfile.ZipFile(path)
    except _ARCHIVE_ERRORS as exc:
        raise ArtifactError(f"{path.name}: not a readable zip archive: {exc}") from exc
    try:
        with archive:
            infos = archive.infolist()
            _check_count(path.name, len(infos))
            total = 0
            for info in infos:
                why = _safe_member_name(info.filename)
                if why:
                    raise ArtifactError(f"{path.name}: member {info.filename!r} has {why}; refused")
                if _zip_is_link(info):
                    raise ArtifactError(
                        f"{path.name}: member {info.filename!r} is a symbolic link; "
                        "links are refused"
                    )
                kind = stat.S_IFMT(info.external_attr >> 16)
                if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                    raise ArtifactError(
                        f"{path.name}: member {info.filename!r} is a device or special file; "
                        "refused"
                    )
                if not info.is_dir():
                    total += max(0, info.file_size)
            _check_total(path.name, total, limit)
            root = os.path.realpath(into)
            for info in infos:
                parts = _member_parts(info.filename)
                if not parts:
                    continue
                target = _target(root, path.name, parts, info.filename)
                if info.is_dir():
                    _make_folder(root, path.name, target, info.filename)
                    continue
                _make_folder(root, path.name, os.path.dirname(target), info.filename)
                with archive.open(info) as data:
                    _write_file(data, target, info.external_attr >> 16)
    except ArtifactError:
        raise
    except _ARCHIVE_ERRORS as exc:
        raise ArtifactError(f"{path.name}: cannot extract the zip archive: {exc}") from exc


@dataclass
class _Budget:
    """Bytes an artifact may still take, counted as they are written."""

    what: str
    limit: int
    used: int = 0

    def spend(self, count: int) -> None:
        self.used += count
        if self.used > self.limit:
            raise ArtifactError(
                f"{self.what}: more than the {format_bytes(self.limit)} an artifact may have "
                "(max_artifact_bytes); refused"
            )


def _copy_file(source: Path, target: Path, budget: _Budget) -> None:
    with source.open("rb") as reader, target.open("xb") as writer:
        while chunk := reader.read(1 << 20):
            budget.spend(len(chunk))
            writer.write(chunk)
    shutil.copystat(source, target)


def _copy_tree(source: Path, into: Path, budget: _Budget) -> None:
    """Folders, regular files and (inside-pointing) links, never following a link."""
    for parent, folders, files in os.walk(source):
        here = Path(parent)
        there = into / here.relative_to(source)
        there.mkdir(parents=True, exist_ok=True)
        for name in (*folders, *files):
            path = here / name
            if path.is_symlink():
                os.symlink(os.readlink(path), there / name)
            elif name in files:
                if not path.is_file():
                    raise ArtifactError(
                        f"{source}: {path.relative_to(source)} is not a regular file; refused"
                    )
                _copy_file(path, there / name, budget)
        folders[:] = [name for name in folders if not (here / name).is_symlink()]


def _check_links_stay_inside(source: Path, real: Path) -> None:
    """Every symbolic link in the folder `source` (really `real`) leads inside it."""
    for parent, folders, files in os.walk(source):
        for entry in (*folders, *files):
            path = Path(parent, entry)
            if path.is_symlink():
                target = path.resolve()
                if target != real and real not in target.parents:
                    shown = path.relative_to(source)
                    raise ArtifactError(
                        f"{source}: {shown} is a symbolic link out of the artifact; refused"
                    )


def _is_version(name: str) -> bool:
    """A version folder's name: ASCII digits, written as the number is ("7", not "07")."""
    return name.isascii() and name.isdigit() and str(int(name)) == name


def _keep_only(into: Path, inner: Path) -> None:
    """Make the content of `inner` (a folder in `into`) the whole content of `into`."""
    holding = into / f".keep-{uuid.uuid4().hex[:8]}"
    os.rename(inner, holding)
    for child in into.iterdir():
        if child != holding:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    for child in holding.iterdir():
        os.rename(child, into / child.name)
    holding.rmdir()


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


def scheme_label(storage_uri: str) -> str:
    """The metric label of a storageUri's scheme, from a small fixed set: local, http, s3,
    gs, azure, or remote (the name of a remote that a spec.secretName defines)."""
    try:
        scheme = urlsplit(storage_uri.strip()).scheme.lower()
    except ValueError:
        return "remote"
    if scheme in ("", "file") or len(scheme) == 1:
        return "local"
    if scheme in ("http", "https"):
        return "http"
    family = SCHEME_FAMILIES.get(scheme)
    return METRIC_LABELS[family] if family else "remote"


async def fetch(
    repository: ModelRepository,
    storage_uri: str,
    into: Path,
    timeout_s: float,
    *,
    secret_name: str = "",
    stores: ObjectStores | None = None,
    what: str = "artifact",
) -> int:
    """Fetch `storage_uri` into the staging folder `into`, within `timeout_s`; the bytes
    fetched. `secret_name`: the model's spec.secretName (object stores only); `what`: who
    fetches, for progress lines (`model iris v3 on mlserver-0`)."""
    uri = storage_uri.strip()
    if not uri:
        raise ArtifactError("the spec has no storageUri")
    shown = redact(uri)
    try:
        parsed = urlparse(uri)
    except ValueError as exc:
        raise ArtifactError(f"{shown}: not a valid URI") from exc
    if parsed.scheme in ("http", "https"):
        target = into / _download_name(uri)
        size = await _download(uri, target, timeout_s, repository.max_artifact_bytes, what)
        await asyncio.to_thread(repository.unpack_if_archive, target)
        return size
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ArtifactError(f"{shown}: file:// URIs must name a local path")
        source = Path(unquote(parsed.path))
    elif parsed.scheme == "":
        source = Path(uri)
    elif parsed.scheme.lower() in SCHEME_FAMILIES or secret_name:
        stores = stores or ObjectStores()
        return await _fetch_object_store(
            repository, uri, into, timeout_s, secret_name=secret_name, stores=stores, what=what
        )
    else:
        raise ArtifactError(
            f"{shown}: scheme {parsed.scheme!r} is not supported (local path, file://, "
            "http(s)://, gs://, s3://, az://, or the remote name of a spec.secretName)"
        )
    return await asyncio.to_thread(repository.copy_local, source, into)


async def _fetch_object_store(
    repository: ModelRepository,
    uri: str,
    into: Path,
    timeout_s: float,
    *,
    secret_name: str,
    stores: ObjectStores,
    what: str,
) -> int:
    shown = redact(uri)
    try:
        async with asyncio.timeout(timeout_s):
            fetched = await stores.fetch(
                uri, secret_name, into, limit=repository.max_artifact_bytes, shown=shown, what=what
            )
    except TimeoutError:
        raise ArtifactError(
            f"{shown}: not fetched within {timeout_s:g}s (fetch_timeout_s)"
        ) from None
    except StorageError as exc:
        raise ArtifactError(str(exc)) from None
    if fetched.single is not None:
        await asyncio.to_thread(repository.unpack_if_archive, fetched.single)
    return fetched.bytes


async def _download(url: str, target: Path, timeout_s: float, limit: int, what: str) -> int:
    shown = redact(url)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    too_big = (
        f"more than the {format_bytes(limit)} an artifact may have (max_artifact_bytes); refused"
    )
    try:
        # auto_decompress=False: the bytes counted are the bytes written, never a
        # gzip-encoded body that inflates past the limit.
        async with (
            aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                raise ArtifactError(f"{shown}: HTTP {response.status}")
            if response.content_length is not None and response.content_length > limit:
                raise ArtifactError(
                    f"{shown}: Content-Length {format_bytes(response.content_length)} is " + too_big
                )
            progress = Progress(what, shown, response.content_length or 0, files=1)
            with target.open("wb") as out:
                async for chunk in response.content.iter_chunked(1 << 20):
                    if progress.done + len(chunk) > limit:
                        raise ArtifactError(f"{shown}: the download is " + too_big)
                    out.write(chunk)
                    progress.add(len(chunk))
            return progress.done
    except TimeoutError as exc:
        raise ArtifactError(f"{shown}: no complete answer within {timeout_s:g}s") from exc
    except aiohttp.ClientError as exc:
        detail = scrub_uri(str(exc) or type(exc).__name__, url)
        raise ArtifactError(f"{shown}: {detail}") from None
    except (ValueError, OSError) as exc:
        # aiohttp raises ValueError for some malformed URLs; OSError: the staging disk.
        detail = scrub_uri(str(exc) or type(exc).__name__, url)
        raise ArtifactError(f"{shown}: {detail}") from None
