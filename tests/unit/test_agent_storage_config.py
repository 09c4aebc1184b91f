"""Object-store URIs and credentials: Seldon's storage secrets (rclone remotes) translated
into file-system options, and the environment's defaults. Pure: no store is contacted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent import storage
from agent.settings import AgentSettings
from agent.storage import DEFAULT_CONCURRENCY, ObjectStores
from agent.storage_config import (
    DEFAULT_SECRETS_DIR,
    EMULATOR_KEY,
    METRIC_LABELS,
    SCHEME_FAMILIES,
    STORE_SCHEMES,
    ObjectUri,
    StorageError,
    StoreConfig,
    from_environment,
    parse_object_uri,
    read_remote,
    store_config,
)
from contract.redaction import scrub
from contract.spec_rules import OBJECT_STORE_SCHEMES

KEY = "AKIAEXAMPLE"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def write_secret(folder: Path, name: str, body: str | dict[str, Any], key: str = "s3") -> Path:
    secret = folder / name
    secret.mkdir(parents=True, exist_ok=True)
    (secret / key).write_text(body if isinstance(body, str) else json.dumps(body))
    return folder


def remote(kind: str, name: str = "r", **parameters: Any) -> dict[str, Any]:
    return {"type": kind, "name": name, "parameters": parameters}


def config_for(tmp_path: Path, uri: str, body: dict[str, Any]) -> StoreConfig:
    write_secret(tmp_path, "the-secret", body)
    target = parse_object_uri(uri, secret_scheme_ok=True)
    return store_config(target, "the-secret", tmp_path, {})


def test_the_defaults_are_the_settings_defaults() -> None:
    settings = AgentSettings()
    assert settings.storage_secrets_dir == DEFAULT_SECRETS_DIR == ObjectStores().secrets_dir
    assert settings.fetch_concurrency == DEFAULT_CONCURRENCY == ObjectStores().concurrency


# -- URIs ---------------------------------------------------------------------------------


def test_the_schemes_are_the_contracts() -> None:
    """One table of stores: their schemes are exactly those the CLI and the scheduler accept
    as object stores, each store's first scheme names it back, and each has a metric label."""
    assert set(SCHEME_FAMILIES) == set(OBJECT_STORE_SCHEMES)
    for family, schemes in STORE_SCHEMES.items():
        assert {SCHEME_FAMILIES[scheme] for scheme in schemes} == {family}
    assert set(METRIC_LABELS) == set(STORE_SCHEMES)


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("s3://models/iris", ObjectUri("s3", "models", "iris")),
        (
            "gs://seldon-models/scv2/samples/mlserver_1.6.0/iris-sklearn/",
            ObjectUri("gs", "seldon-models", "scv2/samples/mlserver_1.6.0/iris-sklearn"),
        ),
        ("GCS://b", ObjectUri("gcs", "b", "")),
        ("az://container/a/b.tgz", ObjectUri("az", "container", "a/b.tgz")),
    ],
)
def test_object_uris(uri: str, parsed: ObjectUri) -> None:
    assert parse_object_uri(uri) == parsed


def test_a_bucket_alone_is_its_path() -> None:
    assert parse_object_uri("s3://b").path == "b"
    assert parse_object_uri("s3://b/k/x").path == "b/k/x"


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("s3:///key", "needs a bucket"),
        ("s3://u:p@b/k", "no user, password or port"),
        ("s3://b:9000/k", "no user, password or port"),
        ("s3://b/k?versionId=1", "no query string"),
        ("s3://b/k#x", "no query string"),
        ("minio://b/k", "not an object store"),
    ],
)
def test_object_uris_refused(uri: str, why: str) -> None:
    with pytest.raises(StorageError, match=why):
        parse_object_uri(uri)


def test_a_remote_name_is_a_scheme_only_with_a_secret() -> None:
    assert parse_object_uri("minio://b/k", secret_scheme_ok=True).scheme == "minio"
    with pytest.raises(StorageError, match=r"only with the spec\.secretName"):
        store_config(ObjectUri("minio", "b", "k"), "", Path("/nowhere"), {})


# -- reading the secret -------------------------------------------------------------------


def test_seldons_yaml_secret(tmp_path: Path) -> None:
    write_secret(
        tmp_path,
        "minio-secret",
        "type: s3\nname: s3\nparameters:\n  provider: minio\n  env_auth: false\n"
        f"  access_key_id: {KEY}\n  secret_access_key: {SECRET}\n"
        "  endpoint: http://minio.minio-system:9000\n",
    )
    found = read_remote(tmp_path, "minio-secret")
    assert (found.name, found.type, found.family) == ("s3", "s3", "s3")
    assert found.parameters["env_auth"] is False


def test_kubernetes_mount_links_are_followed_and_hidden_entries_ignored(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    data = secret / "..2024_01_01_00_00_00.1"
    data.mkdir(parents=True)
    (data / "gs").write_text(json.dumps(remote("google cloud storage", "gs", anonymous=True)))
    (secret / "..data").symlink_to(data.name)
    (secret / "gs").symlink_to("..data/gs")
    assert read_remote(tmp_path, "s").family == "gcs"


@pytest.mark.parametrize(
    ("name", "prepare", "why"),
    [
        ("Bad_Name", None, "is not a Kubernetes Secret name"),
        ("../etc", None, "is not a Kubernetes Secret name"),
        ("absent", None, "secret 'absent' is not mounted"),
        ("two", "two", "holds 2 keys"),
        ("empty", "empty", "holds 0 keys"),
        ("junk", "junk", "neither JSON nor YAML"),
        ("text", "text", "not an rclone remote config"),
        ("dropbox", "dropbox", "remote type 'dropbox' is not supported"),
        ("params", "params", "'parameters' is not a mapping"),
        ("big", "big", "larger than 1 MiB"),
    ],
)
def test_bad_secrets_name_themselves_never_their_content(
    tmp_path: Path, name: str, prepare: str | None, why: str
) -> None:
    folder = tmp_path / name
    if prepare == "two":
        write_secret(tmp_path, name, remote("s3", secret_access_key=SECRET), key="a")
        write_secret(tmp_path, name, remote("s3", secret_access_key=SECRET), key="b")
    elif prepare == "empty":
        folder.mkdir()
    elif prepare == "junk":
        write_secret(tmp_path, name, f"{SECRET}: [unclosed")
    elif prepare == "text":
        write_secret(tmp_path, name, SECRET)
    elif prepare == "dropbox":
        write_secret(tmp_path, name, remote("dropbox", token=SECRET))
    elif prepare == "params":
        write_secret(tmp_path, name, {"type": "s3", "parameters": [SECRET]})
    elif prepare == "big":
        write_secret(tmp_path, name, SECRET * 30_000)
    with pytest.raises(StorageError, match=why) as caught:
        read_remote(tmp_path, name)
    assert SECRET not in str(caught.value)


def test_a_remote_of_another_type_than_the_scheme_is_refused(tmp_path: Path) -> None:
    write_secret(tmp_path, "s", remote("s3", "minio", access_key_id=KEY))
    with pytest.raises(StorageError, match=r"must start with minio:// .* not gs://"):
        store_config(ObjectUri("gs", "b", "k"), "s", tmp_path, {})


# -- s3 -----------------------------------------------------------------------------------


def test_s3_keys_endpoint_and_region(tmp_path: Path) -> None:
    body = remote(
        "s3",
        "minio",
        provider="minio",
        env_auth="false",
        access_key_id=KEY,
        secret_access_key=SECRET,
        session_token="tok-123456",
        endpoint="minio.minio-system:9000",
        region="eu-west-1",
    )
    config = config_for(tmp_path, "minio://models/iris", body)
    assert config.options == {
        "key": KEY,
        "secret": SECRET,
        "token": "tok-123456",
        "client_kwargs": {"region_name": "eu-west-1"},
        "endpoint_url": "https://minio.minio-system:9000",
        "config_kwargs": {"s3": {"addressing_style": "path"}},
    }
    assert config.secrets == (SECRET, "tok-123456")
    assert config.has_credentials and config.source == "secret 'the-secret'"


def test_s3_without_keys_is_anonymous_unless_env_auth(tmp_path: Path) -> None:
    assert config_for(tmp_path, "s3://b/k", remote("s3")).options == {"anon": True}
    chain = config_for(tmp_path, "s3://b/k", remote("s3", env_auth=True, force_path_style=False))
    assert chain.options == {"config_kwargs": {"s3": {"addressing_style": "virtual"}}}
    assert chain.has_credentials


def test_s3_unsupported_credential_parameters_are_named(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="'role_arn' is not supported"):
        config_for(tmp_path, "s3://b/k", remote("s3", role_arn="arn:aws:iam::1:role/x"))


# -- gcs ----------------------------------------------------------------------------------


def test_seldons_public_gcs_remote_is_anonymous(tmp_path: Path) -> None:
    body = {"type": "google cloud storage", "name": "gs", "parameters": {"anonymous": True}}
    config = config_for(tmp_path, "gs://seldon-models/scv2/iris", body)
    assert config.family == "gcs"
    assert config.options == {"token": "anon"}
    assert not config.has_credentials


def test_gcs_service_account_credentials(tmp_path: Path) -> None:
    key = {"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----abc"}
    body = remote(
        "gcs",
        "gcs",
        service_account_credentials=json.dumps(key),
        project_number="123",
        endpoint="http://127.0.0.1:9023",
    )
    config = config_for(tmp_path, "gcs://bucket/model", body)
    assert config.options == {
        "token": key,
        "project": "123",
        "endpoint_url": "http://127.0.0.1:9023",
    }
    assert key["private_key"] in config.secrets
    assert config.has_credentials


def test_gcs_credentials_that_are_not_json_are_refused_unquoted(tmp_path: Path) -> None:
    body = remote("gcs", service_account_credentials=SECRET)
    with pytest.raises(StorageError, match="not a JSON object") as caught:
        config_for(tmp_path, "gs://b/k", body)
    assert SECRET not in str(caught.value)


def test_gcs_oauth_tokens_of_rclone_are_not_supported(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="'token' is not supported"):
        config_for(tmp_path, "gs://b/k", remote("gcs", token='{"access_token": "x"}'))


# -- azureblob ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "options"),
    [
        ({"account": "acct", "key": "k3y"}, {"account_name": "acct", "account_key": "k3y"}),
        (
            {"account": "acct", "key": "k3y", "endpoint": "http://127.0.0.1:10000/acct/"},
            {
                "connection_string": "DefaultEndpointsProtocol=http;AccountName=acct;"
                "AccountKey=k3y;BlobEndpoint=http://127.0.0.1:10000/acct;"
            },
        ),
        (
            {"connection_string": "AccountName=a;AccountKey=k;"},
            {"connection_string": "AccountName=a;AccountKey=k;"},
        ),
        (
            {"sas_url": "https://acct.blob.core.windows.net/models?sv=2024&sig=abcd"},
            {
                "connection_string": "BlobEndpoint=https://acct.blob.core.windows.net;"
                "SharedAccessSignature=sv=2024&sig=abcd;"
            },
        ),
        (
            {"use_emulator": "true"},
            {
                "connection_string": "DefaultEndpointsProtocol=http;AccountName="
                f"devstoreaccount1;AccountKey={EMULATOR_KEY};"
                "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
            },
        ),
        ({"account": "public"}, {"account_name": "public", "anon": True}),
        ({"account": "acct", "env_auth": True}, {"account_name": "acct", "anon": False}),
        (
            {"account": "acct", "tenant": "t", "client_id": "c", "client_secret": "s3cr3t"},
            {
                "account_name": "acct",
                "client_id": "c",
                "client_secret": "s3cr3t",
                "tenant_id": "t",
                "anon": False,
            },
        ),
    ],
)
def test_azureblob_parameters(
    tmp_path: Path, parameters: dict[str, Any], options: dict[str, Any]
) -> None:
    config = config_for(tmp_path, "az://models/iris", remote("azureblob", "az", **parameters))
    assert config.family == "azure"
    assert config.options == options
    for name in ("key", "client_secret", "connection_string", "sas_url"):
        if name in parameters:
            assert parameters[name] in config.secrets


def test_azureblob_needs_an_account(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="needs 'account'"):
        config_for(tmp_path, "az://c/k", remote("azureblob", endpoint="http://x"))


def test_a_sas_url_without_signature_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no signature"):
        config_for(tmp_path, "az://c/k", remote("azureblob", sas_url="https://a.blob/c"))


# -- the environment ----------------------------------------------------------------------


def test_s3_from_the_environment_takes_its_endpoint() -> None:
    config = from_environment("s3", {"AWS_ENDPOINT_URL": "http://minio:9000"})
    assert config.options == {
        "endpoint_url": "http://minio:9000",
        "config_kwargs": {"s3": {"addressing_style": "path"}},
    }
    assert config.anonymous_fallback
    specific = {"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://b"}
    assert from_environment("s3", specific).options["endpoint_url"] == "http://b"
    assert from_environment("s3", {}).options == {}


def test_gcs_from_the_environment() -> None:
    assert from_environment("gcs", {}).options == {}
    emulator = from_environment("gcs", {"STORAGE_EMULATOR_HOST": "localhost:9023"})
    assert emulator.options == {"endpoint_url": "http://localhost:9023", "token": "anon"}
    with_key = {"STORAGE_EMULATOR_HOST": "http://e", "GOOGLE_APPLICATION_CREDENTIALS": "/k"}
    assert from_environment("gcs", with_key).options == {"endpoint_url": "http://e"}


def test_azure_from_the_environment() -> None:
    with pytest.raises(StorageError, match="which Azure storage account"):
        from_environment("azure", {})
    public = from_environment("azure", {"AZURE_STORAGE_ACCOUNT_NAME": "acct"})
    assert public.options == {"anon": True} and not public.has_credentials
    keyed = from_environment(
        "azure", {"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ACCOUNT_KEY": "k3y4"}
    )
    assert keyed.options == {} and keyed.secrets == ("k3y4",)
    workload = from_environment(
        "azure", {"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_FEDERATED_TOKEN_FILE": "/t"}
    )
    assert workload.options == {} and workload.has_credentials


# -- messages -----------------------------------------------------------------------------


def test_scrub_removes_signatures_userinfo_and_secrets() -> None:
    text = (
        "GET https://u:pw@acct.blob.core.windows.net/c/b?sv=1&sig=abcd failed; "
        f"key {SECRET} refused"
    )
    assert scrub(text, (SECRET,)) == (
        "GET https://acct.blob.core.windows.net/c/b failed; key *** refused"
    )


def test_scrub_removes_a_multi_line_secret_as_an_error_text_quotes_it() -> None:
    """A private key (PEM, several lines) shows escaped in a repr or a JSON text, or one
    line of it at a time."""
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n"
    for text in (json.dumps({"private_key": pem}), repr(pem), pem.splitlines()[1]):
        assert "MIIEvQ" not in scrub(f"bad key: {text}", (pem,)), text


# -- credentials of the environment are never shown -------------------------------------

ENV_SECRET = "env-secret-value-9876543210"
CONNECTION = (
    "DefaultEndpointsProtocol=https;AccountName=acct;"
    f"AccountKey={ENV_SECRET};EndpointSuffix=core.windows.net"
)
SAS_CONNECTION = (
    "BlobEndpoint=https://acct.blob.core.windows.net;"
    f"SharedAccessSignature=sv=2024-01-01&sig={ENV_SECRET}"
)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AWS_SECRET_ACCESS_KEY", ENV_SECRET),
        ("AWS_SESSION_TOKEN", ENV_SECRET),
        ("AZURE_STORAGE_KEY", ENV_SECRET),
        ("AZURE_STORAGE_ACCOUNT_KEY", ENV_SECRET),
        ("AZURE_STORAGE_SAS_TOKEN", f"?sv=2024-01-01&sig={ENV_SECRET}"),
        ("AZURE_STORAGE_CONNECTION_STRING", CONNECTION),
        ("AZURE_STORAGE_CONNECTION_STRING", SAS_CONNECTION),
        ("AZURE_STORAGE_CLIENT_SECRET", ENV_SECRET),
        ("AZURE_CLIENT_SECRET", ENV_SECRET),
    ],
)
@pytest.mark.parametrize("scheme", ["s3", "gs", "az"])
def test_credentials_in_the_environment_never_show(scheme: str, variable: str, value: str) -> None:
    """Whatever part of the variable an error text quotes (the whole value, a connection
    string's AccountKey, a signature) comes out as ***."""
    environ = {"AZURE_STORAGE_ACCOUNT_NAME": "acct", variable: value}
    config = store_config(ObjectUri(scheme, "b", "k"), "", Path("/nowhere"), environ)
    for quoted in (value, ENV_SECRET):
        assert ENV_SECRET not in scrub(f"refused: {quoted}; try again", config.secrets)


def test_short_environment_values_are_not_scrubbed() -> None:
    """A value of a few characters would blank unrelated words out of every message."""
    config = from_environment("s3", {"AWS_SECRET_ACCESS_KEY": "abc", "AWS_SESSION_TOKEN": ""})
    assert config.secrets == ()


def test_a_secrets_own_connection_string_and_signature_parts_never_show(tmp_path: Path) -> None:
    body = remote("azureblob", "az", connection_string=CONNECTION)
    config = config_for(tmp_path, "az://c/k", body)
    assert ENV_SECRET not in scrub(f"key {ENV_SECRET} refused", config.secrets)
    sas = f"https://acct.blob.core.windows.net/c?sv=2024&sig={ENV_SECRET}"
    config = config_for(tmp_path, "az://c/k", remote("azureblob", "az", sas_url=sas))
    assert ENV_SECRET not in scrub(f"signature {ENV_SECRET} refused", config.secrets)


def test_a_secret_that_env_auth_reads_from_the_environment_never_shows(tmp_path: Path) -> None:
    write_secret(tmp_path, "chain", remote("s3", "s3", env_auth=True))
    environ = {"AWS_SECRET_ACCESS_KEY": ENV_SECRET}
    config = store_config(ObjectUri("s3", "b", "k"), "chain", tmp_path, environ)
    assert ENV_SECRET in config.secrets


def test_a_secret_across_the_cut_of_a_long_library_message_leaks_nothing() -> None:
    """Library texts are cut at 300 characters: after the secrets are removed, never
    before (a cut through a secret would leave its beginning unmatched)."""
    config = from_environment("s3", {"AWS_SECRET_ACCESS_KEY": ENV_SECRET})
    fail = storage._Failure("s3://b/k", ObjectUri("s3", "b", "k"), config)
    for padding in range(280, 301):
        message = str(fail(RuntimeError("x" * padding + ENV_SECRET + " and more")))
        assert ENV_SECRET[:4] not in message, padding
