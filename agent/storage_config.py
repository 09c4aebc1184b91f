"""Where an object-store artifact lives and how to reach it: its URI and its credentials.

`s3://bucket/key`, `gs://` (or `gcs://`) and `az://` (or `azureblob://`, the bucket being an
Azure container) name a bucket and a key or a prefix (a folder) in it. How the agent reaches
the store, in order:

- the model's `spec.secretName`: a Kubernetes Secret holding one rclone remote config, the
  format Seldon Core 2 uses (`type`, `name`, `parameters`, as YAML or JSON), mounted into the
  agent at `<storage_secrets_dir>/<secretName>/<key>`. Its `name` is the scheme the
  storageUri uses (`minio://models/iris` for a remote named `minio`); a storageUri with the
  standard scheme of the remote's type works too (`s3://` for a remote of type s3). The
  common rclone parameters of the types s3, google cloud storage (gcs) and azureblob are
  translated into the options of the fsspec file system (`StoreConfig.options`);
- otherwise the agent's environment, through each library's own credential chain
  (`AWS_*`, `GOOGLE_APPLICATION_CREDENTIALS`, `STORAGE_EMULATOR_HOST`, `AZURE_STORAGE_*`), and
  anonymous access (a public bucket) where that chain holds no credentials.

Nothing here touches the network or imports a storage library; the values of a secret, and
the credentials of the environment (ENVIRONMENT_SECRET_VARIABLES), never appear in a message
(`StoreConfig.secrets` lists them and their parts, for `scrub`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml

from contract.names import is_dns1123_subdomain
from contract.redaction import MIN_SECRET_CHARS

Family = Literal["s3", "gcs", "azure"]

# The stores: the storageUri schemes that name each (its standard scheme first) and the
# label of its fetches in the agent's metrics. The schemes are the contract's
# (`contract.spec_rules.OBJECT_STORE_SCHEMES`, what the CLI and the scheduler accept); a
# unit test checks that the two lists agree.
STORE_SCHEMES: dict[Family, tuple[str, ...]] = {
    "s3": ("s3",),
    "gcs": ("gs", "gcs"),
    "azure": ("az", "azureblob"),
}
METRIC_LABELS: dict[Family, str] = {"s3": "s3", "gcs": "gs", "azure": "azure"}
# storageUri scheme → the store it names.
SCHEME_FAMILIES: dict[str, Family] = {
    scheme: family for family, schemes in STORE_SCHEMES.items() for scheme in schemes
}
# rclone remote type → the store it names (rclone calls GCS "google cloud storage").
RCLONE_TYPES: dict[str, Family] = {
    "s3": "s3",
    "google cloud storage": "gcs",
    "gcs": "gcs",
    "azureblob": "azure",
}
DEFAULT_SECRETS_DIR = Path("/etc/gpuplace/storage-secrets")
# The most a storage secret may hold: a service-account key is a few KiB.
_MAX_SECRET_BYTES = 1 << 20
# Azurite's well-known development account (public, documented by Microsoft), for rclone's
# use_emulator.
EMULATOR_ACCOUNT = "devstoreaccount1"
EMULATOR_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
EMULATOR_ENDPOINT = f"http://127.0.0.1:10000/{EMULATOR_ACCOUNT}"
# Environment variables that give the Azure libraries credentials (adlfs reads the
# AZURE_STORAGE_* ones, azure-identity's DefaultAzureCredential the others). Without any of
# them the agent reads Azure anonymously (a public container).
AZURE_CREDENTIAL_VARIABLES = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CLIENT_ID",
    "AZURE_STORAGE_ANON",
    "AZURE_CLIENT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
)
# Environment variables whose values are credentials (the libraries read them): their
# values never appear in a message. A connection string's AccountKey and
# SharedAccessSignature, and a signature's `sig`, are removed on their own too.
ENVIRONMENT_SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_PASSWORD",
)
# rclone parameters that carry credentials in a form the agent cannot use.
_UNSUPPORTED = {
    "s3": ("shared_credentials_file", "profile", "role_arn"),
    "gcs": ("token", "client_id", "client_secret", "access_token"),
    "azure": (
        "use_msi",
        "msi_object_id",
        "msi_client_id",
        "msi_mi_res_id",
        "client_certificate_path",
    ),
}


class StorageError(Exception):
    """An object-store artifact cannot be found, reached, read or written; the message names
    what and why, and carries no secret."""


@dataclass(frozen=True)
class ObjectUri:
    """`scheme://bucket/key`: `key` has no leading or trailing `/` and is empty for the
    whole bucket."""

    scheme: str
    bucket: str
    key: str

    @property
    def path(self) -> str:
        """The fsspec path: `bucket/key`, or `bucket`."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket


@dataclass(frozen=True)
class StoreConfig:
    """How to reach one store: the file system's keyword arguments and what must never be
    shown."""

    family: Family
    options: Mapping[str, Any]
    # Where the credentials come from, for messages: "secret 'minio-secret'" or
    # "the agent's environment".
    source: str
    # Values that must not appear in any message (keys, tokens, signatures).
    secrets: tuple[str, ...] = ()
    # S3 only: read anonymously when the AWS credential chain finds no credentials.
    anonymous_fallback: bool = False
    # Whether credentials were given: a refusal then means they are wrong.
    has_credentials: bool = False


@dataclass(frozen=True)
class Remote:
    """One rclone remote, as read from a storage secret."""

    secret: str
    name: str
    type: str
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> Family:
        return RCLONE_TYPES[self.type]


def parse_object_uri(uri: str, secret_scheme_ok: bool = False) -> ObjectUri:
    """The bucket and key of an object-store URI; `secret_scheme_ok`: any scheme (a remote
    name resolved through a secret) is accepted."""
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise StorageError(f"not a valid URI: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEME_FAMILIES and not secret_scheme_ok:
        raise StorageError(f"scheme {scheme!r} is not an object store")
    if "@" in parts.netloc or ":" in parts.netloc:
        raise StorageError(
            "an object-store URI carries no user, password or port: give credentials "
            "through spec.secretName or the agent's environment"
        )
    if not parts.netloc:
        raise StorageError(f"{scheme}:// needs a bucket (or container): {scheme}://<bucket>/<path>")
    if parts.query or parts.fragment:
        raise StorageError("an object-store URI takes no query string or fragment")
    return ObjectUri(scheme, parts.netloc, parts.path.strip("/"))


# -- secrets ------------------------------------------------------------------------------


def read_remote(directory: Path, secret_name: str) -> Remote:
    """The rclone remote in the storage secret `secret_name`, mounted under `directory`."""
    if not is_dns1123_subdomain(secret_name):
        raise StorageError(
            f"secretName {secret_name!r} is not a Kubernetes Secret name "
            "(lowercase letters, digits, '-' and '.', at most 253 characters)"
        )
    folder = directory / secret_name
    where = f"secret {secret_name!r}"
    if not folder.is_dir():
        raise StorageError(
            f"{where} is not mounted: no folder {folder} (mount the Secret there, "
            "or point --storage-secrets-dir at the folder that holds it)"
        )
    try:
        # Kubernetes mounts each key as a file (a link into a hidden `..data` folder).
        keys = sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
        files = [entry for entry in keys if entry.is_file()]
        if len(files) != 1 or len(keys) != 1:
            raise StorageError(
                f"{where} holds {len(keys)} keys in {folder}; a storage secret holds exactly "
                "one: an rclone remote config (type, name, parameters)"
            )
        with files[0].open("rb") as handle:
            raw = handle.read(_MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise StorageError(f"{where} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > _MAX_SECRET_BYTES:
        raise StorageError(f"{where} is larger than 1 MiB; not an rclone remote config")
    return parse_remote(secret_name, raw)


def parse_remote(secret_name: str, raw: bytes) -> Remote:
    """An rclone remote config (YAML or JSON) → Remote. Messages never quote the content."""
    where = f"secret {secret_name!r}"
    body: Any
    try:
        text = raw.decode()
        try:
            body = json.loads(text)
        except ValueError:
            body = yaml.safe_load(text)
    except (UnicodeDecodeError, yaml.YAMLError):
        raise StorageError(f"{where} is neither JSON nor YAML") from None
    if not isinstance(body, dict):
        raise StorageError(f"{where} is not an rclone remote config (type, name, parameters)")
    kind = str(body.get("type") or "").strip().lower()
    if kind not in RCLONE_TYPES:
        shown = repr(kind) if len(kind) <= 40 else "(an unknown type)"
        raise StorageError(
            f"{where}: remote type {shown} is not supported; "
            "supported: s3, google cloud storage (gcs), azureblob"
        )
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise StorageError(f"{where}: 'parameters' is not a mapping")
    name = str(body.get("name") or "").strip().lower()
    return Remote(secret_name, name, kind, {str(k).lower(): v for k, v in parameters.items()})


def remote_matches(remote: Remote, scheme: str) -> bool:
    """Whether a storageUri with `scheme` is meant for this remote: the remote's name, or the
    standard scheme of its type."""
    return scheme == remote.name or SCHEME_FAMILIES.get(scheme) == remote.family


def from_remote(remote: Remote) -> StoreConfig:
    """The file-system options that the rclone parameters of `remote` describe."""
    for name in _UNSUPPORTED[remote.family]:
        if _text(remote.parameters, name):
            raise StorageError(
                f"secret {remote.secret!r}: rclone parameter {name!r} is not supported by the "
                f"agent; see docs/agent.md for the {remote.type} parameters it reads"
            )
    source = f"secret {remote.secret!r}"
    if remote.family == "s3":
        return _s3_remote(remote.parameters, source)
    if remote.family == "gcs":
        return _gcs_remote(remote.parameters, source)
    return _azure_remote(remote.parameters, source)


def _text(parameters: Mapping[str, Any], name: str) -> str:
    value = parameters.get(name)
    if value is None or isinstance(value, bool):
        return ""
    return str(value).strip()


def _flag(parameters: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = parameters.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def _with_scheme(endpoint: str) -> str:
    """rclone accepts an endpoint without a scheme (https then)."""
    return endpoint if "://" in endpoint else f"https://{endpoint}"


def _s3_remote(parameters: Mapping[str, Any], source: str) -> StoreConfig:
    options: dict[str, Any] = {}
    key = _text(parameters, "access_key_id")
    secret = _text(parameters, "secret_access_key")
    token = _text(parameters, "session_token")
    if key or secret:
        options.update(key=key, secret=secret)
        if token:
            options["token"] = token
    elif not _flag(parameters, "env_auth"):
        # rclone: no keys and no env_auth is anonymous access.
        options["anon"] = True
    region = _text(parameters, "region")
    if region:
        options["client_kwargs"] = {"region_name": region}
    endpoint = _text(parameters, "endpoint")
    if endpoint:
        options["endpoint_url"] = _with_scheme(endpoint)
    if endpoint or "force_path_style" in parameters:
        # rclone's default is path style (bucket in the path), which MinIO and Ceph need.
        style = "path" if _flag(parameters, "force_path_style", default=True) else "virtual"
        options["config_kwargs"] = {"s3": {"addressing_style": style}}
    return StoreConfig(
        "s3",
        options,
        source,
        secrets=tuple(value for value in (secret, token) if value),
        has_credentials=bool(key or secret) or _flag(parameters, "env_auth"),
    )


def _gcs_remote(parameters: Mapping[str, Any], source: str) -> StoreConfig:
    options: dict[str, Any] = {}
    secrets: list[str] = []
    credentials = _text(parameters, "service_account_credentials")
    file = _text(parameters, "service_account_file")
    if _flag(parameters, "anonymous"):
        options["token"] = "anon"
    elif credentials:
        try:
            info = json.loads(credentials)
        except ValueError:
            info = None
        if not isinstance(info, dict):
            raise StorageError(
                f"{source}: service_account_credentials is not a JSON object "
                "(the content of a service-account key file)"
            )
        options["token"] = info
        secrets += [
            credentials,
            *(str(info[k]) for k in ("private_key", "private_key_id") if k in info),
        ]
    elif file:
        options["token"] = file
    project = _text(parameters, "project_number")
    if project:
        options["project"] = project
    endpoint = _text(parameters, "endpoint")
    if endpoint:
        options["endpoint_url"] = _with_scheme(endpoint)
    return StoreConfig(
        "gcs",
        options,
        source,
        secrets=tuple(secrets),
        has_credentials=bool(credentials or file or _flag(parameters, "env_auth")),
    )


def _connection_string(endpoint: str, **fields: str) -> str:
    """An Azure Storage connection string with a custom blob endpoint."""
    scheme = urlsplit(endpoint).scheme or "https"
    items = {"DefaultEndpointsProtocol": scheme, **fields, "BlobEndpoint": endpoint}
    return "".join(f"{name}={value};" for name, value in items.items() if value)


def _azure_remote(parameters: Mapping[str, Any], source: str) -> StoreConfig:
    account = _text(parameters, "account")
    key = _text(parameters, "key")
    endpoint = _text(parameters, "endpoint")
    connection_string = _text(parameters, "connection_string")
    sas_url = _text(parameters, "sas_url")
    client_secret = _text(parameters, "client_secret")
    if _flag(parameters, "use_emulator"):
        account = account or EMULATOR_ACCOUNT
        key = key or EMULATOR_KEY
        endpoint = endpoint or EMULATOR_ENDPOINT
    endpoint = _with_scheme(endpoint).rstrip("/") if endpoint else ""
    options: dict[str, Any] = {}
    secrets = [
        *_secret_parts(key),
        *_secret_parts(connection_string),
        *_secret_parts(client_secret),
    ]
    if connection_string:
        options["connection_string"] = connection_string
    elif sas_url:
        # rclone's sas_url is a container URL with its signature: the endpoint is that URL
        # without the container (the last path component) and without the query.
        parts = urlsplit(_with_scheme(sas_url))
        if not parts.query:
            raise StorageError(f"{source}: sas_url carries no signature (no query string)")
        base = urlunsplit(
            (parts.scheme, parts.netloc, parts.path.rstrip("/").rpartition("/")[0], "", "")
        )
        options["connection_string"] = f"BlobEndpoint={base};SharedAccessSignature={parts.query};"
        secrets += [sas_url, *_secret_parts(parts.query)]
    elif not account:
        raise StorageError(
            f"{source}: an azureblob remote needs 'account' (with 'key', a service principal, "
            "env_auth or nothing for a public container), 'sas_url', 'connection_string' or "
            "use_emulator"
        )
    elif key and endpoint:
        options["connection_string"] = _connection_string(
            endpoint, AccountName=account, AccountKey=key
        )
    elif key:
        options.update(account_name=account, account_key=key)
    elif endpoint and not (client_secret or _flag(parameters, "env_auth")):
        options["connection_string"] = _connection_string(endpoint, AccountName=account)
    else:
        options["account_name"] = account
        if endpoint:
            options["account_host"] = urlsplit(endpoint).netloc
        if client_secret:
            options.update(
                client_id=_text(parameters, "client_id"),
                client_secret=client_secret,
                tenant_id=_text(parameters, "tenant"),
            )
        # env_auth: azure-identity's DefaultAzureCredential; neither: a public container.
        options["anon"] = not (client_secret or _flag(parameters, "env_auth"))
    has_credentials = bool(
        key or connection_string or sas_url or client_secret or _flag(parameters, "env_auth")
    )
    return StoreConfig("azure", options, source, _unique(secrets), has_credentials=has_credentials)


# -- the environment ----------------------------------------------------------------------


def from_environment(family: Family, environ: Mapping[str, str]) -> StoreConfig:
    """The options for `family` when no secret is given: the libraries read the environment
    themselves; only endpoints and the anonymous fallback are decided here."""
    source = "the agent's environment"
    if family == "s3":
        options: dict[str, Any] = {}
        endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or ""
        if endpoint:
            options["endpoint_url"] = endpoint
            options["config_kwargs"] = {"s3": {"addressing_style": "path"}}
        # Whether the AWS chain finds credentials is known only when the client is made
        # (storage.py): anonymous then, when it finds none.
        return StoreConfig(
            "s3",
            options,
            source,
            environment_secrets(environ),
            anonymous_fallback=True,
            has_credentials=True,
        )
    if family == "gcs":
        options = {}
        emulator = environ.get("STORAGE_EMULATOR_HOST", "").strip()
        credentials = environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")
        if emulator:
            options["endpoint_url"] = emulator if "://" in emulator else f"http://{emulator}"
            if not credentials:
                # An emulator needs no credentials: do not look for any.
                options["token"] = "anon"
        return StoreConfig(
            "gcs", options, source, environment_secrets(environ), has_credentials=bool(credentials)
        )
    connection_string = environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
    if not connection_string and not environ.get("AZURE_STORAGE_ACCOUNT_NAME"):
        raise StorageError(
            "which Azure storage account? Set AZURE_STORAGE_ACCOUNT_NAME (or "
            "AZURE_STORAGE_CONNECTION_STRING) in the agent's environment, or give the model "
            "a spec.secretName with an azureblob remote"
        )
    options = {}
    has = any(environ.get(name) for name in AZURE_CREDENTIAL_VARIABLES)
    if not has:
        options["anon"] = True
    return StoreConfig("azure", options, source, environment_secrets(environ), has_credentials=has)


def store_config(
    uri: ObjectUri, secret_name: str, secrets_dir: Path, environ: Mapping[str, str]
) -> StoreConfig:
    """How to reach the store `uri` names: through the secret when one is named, else
    through the environment."""
    if secret_name:
        remote = read_remote(secrets_dir, secret_name)
        if not remote_matches(remote, uri.scheme):
            named = f"remote {remote.name!r}" if remote.name else "a remote without a name"
            raise StorageError(
                f"secret {secret_name!r} holds {named} of type {remote.type!r}: the storageUri "
                f"must start with {remote.name or _standard_scheme(remote.family)}:// "
                f"(or the scheme of its type), not {uri.scheme}://"
            )
        config = from_remote(remote)
        # env_auth reads the environment's credentials: never show those either.
        return replace(config, secrets=_unique([*config.secrets, *environment_secrets(environ)]))
    family = SCHEME_FAMILIES.get(uri.scheme)
    if family is None:
        raise StorageError(
            f"scheme {uri.scheme!r} names no object store; a remote's name works as a scheme "
            "only with the spec.secretName that defines it"
        )
    return from_environment(family, environ)


def _standard_scheme(family: Family) -> str:
    return STORE_SCHEMES[family][0]


# -- messages -----------------------------------------------------------------------------


def environment_secrets(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The credentials in `environ` (ENVIRONMENT_SECRET_VARIABLES), and their parts that a
    library may quote on their own."""
    parts = (
        part for name in ENVIRONMENT_SECRET_VARIABLES for part in _secret_parts(environ.get(name))
    )
    return _unique(part for part in parts if len(part) >= MIN_SECRET_CHARS)


def _secret_parts(value: str | None) -> Iterator[str]:
    """`value`, and the secrets inside it when it is a connection string (its AccountKey
    and SharedAccessSignature) or a SAS token (its signature)."""
    value = (value or "").strip()
    if not value:
        return
    yield value
    for item in value.split(";"):
        name, _, part = item.partition("=")
        if name.strip().lower() in ("accountkey", "sharedaccesssignature") and part:
            yield from _secret_parts(part)
    if "sig=" in value and ";" not in value:  # a SAS token: sv=...&sig=...
        query = value.lstrip("?")
        yield query
        for item in query.split("&"):
            name, _, part = item.partition("=")
            if name == "sig" and part:
                yield part
                yield unquote(part)


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    """Each value once, in order."""
    return tuple(dict.fromkeys(values))
