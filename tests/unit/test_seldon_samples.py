"""Seldon Core 2's own sample resources (tests/fixtures/seldon) load as written; the few that
do not hold real errors, each named here with the exact problem. Every field of Seldon's
Model, Server and ServerConfig is known to the parser and listed in docs/cli.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpuplace.resources import SPECS, ResourceError, load_files, unused_reason

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "fixtures" / "seldon"
FILES = sorted(path.relative_to(SAMPLES).as_posix() for path in SAMPLES.rglob("*.yaml"))

_LABEL = (
    "is not a DNS-1123 label: at most 63 characters, lower-case letters, digits and '-', "
    "starting and ending with a letter or digit"
)
_K8S_TOO = " (Kubernetes refuses it as an object name too)"
_STORAG_URI = (
    "line 6: spec.storagUri: unknown field (did you mean storageUri?); allowed: "
    "artifactVersion, dataflow, dedicated, explainer, gpuMemory, gpus, llm, logger, "
    "maxReplicas, memory, minReplicas, modelType, parameters, preloaded, replicas, "
    "requirements, schemaUri, secretName, server, storageUri"
)
_EMPTY_URI = (
    "line 6: spec.storageUri: must not be empty; leave storageUri out for a model without an "
    "artifact"
)
_NULL_SPEC = "line 5: spec: required field is null (null means unset, as in Kubernetes); "

# The files that must not load: each with its real error (file, document and what follow).
REFUSED: dict[str, str] = {
    # Seldon's own examples of a bad spec: a misspelled field, an empty URI.
    "docs-gb/examples/assets/models/error-bad-spec.yaml": f"(Model iris), {_STORAG_URI}",
    "samples/models/error-bad-spec.yaml": f"(Model iris), {_STORAG_URI}",
    "docs-gb/examples/assets/models/error-no-uri.yaml": f"(Model bad-uri), {_EMPTY_URI}",
    "samples/models/error-no-uri.yaml": f"(Model bad-uri), {_EMPTY_URI}",
    # Names Kubernetes refuses ('_'), used with Seldon's CLI outside Kubernetes only.
    **{
        f"{folder}/{name}.yaml": (
            f"(Model {name}), line 4: metadata.name: '{name}' {_LABEL}{_K8S_TOO}"
        )
        for folder in ("docs-gb/examples/assets/models", "samples/models")
        for name in ("id1_node", "id2_node", "join_node")
    },
    # Seldon's example of a bad Server name: a dot cannot name its Service.
    "samples/servers/mlserver-badname.yaml": (
        f"(Server mlserver.name), line 4: metadata.name: 'mlserver.name' {_LABEL}"
    ),
    # The operator's scaffolding placeholders ("TODO(user): Add fields here").
    "operator/config/samples/mlops_v1alpha1_model.yaml": (
        f"(Model model-sample), {_NULL_SPEC}a Model needs a spec: what to load and where"
    ),
    "operator/config/samples/mlops_v1alpha1_serverconfig.yaml": (
        f"(ServerConfig serverconfig-sample), {_NULL_SPEC}a ServerConfig needs a spec with its "
        "podSpec"
    ),
}
LOADING = [file for file in FILES if file not in REFUSED]


@pytest.mark.parametrize(
    "loading", [LOADING], ids=[f"{len(LOADING)}-of-{len(FILES)}-load-{len(REFUSED)}-refused"]
)
def test_every_sample_file_is_here_and_the_refused_ones_are_few(loading: list[str]) -> None:
    assert len(FILES) == 163, "tests/fixtures/seldon/README.md: the files copied"
    assert set(REFUSED) <= set(FILES)
    assert len(loading) + len(REFUSED) == len(FILES)


@pytest.mark.parametrize(
    "file", LOADING, ids=[f"{i + 1:03d}-of-{len(LOADING)}:{f}" for i, f in enumerate(LOADING)]
)
def test_seldon_sample_loads(file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(SAMPLES)
    bundle = load_files([file])
    assert bundle.models or bundle.servers or bundle.server_configs
    for warning in bundle.warnings:
        assert "unknown field" not in warning.message


@pytest.mark.parametrize("file", sorted(REFUSED), ids=[f"refused:{f}" for f in sorted(REFUSED)])
def test_seldon_sample_refused_with_its_real_error(
    file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(SAMPLES)
    with pytest.raises(ResourceError) as caught:
        load_files([file])
    assert [str(problem) for problem in caught.value.problems] == [
        f"{file}, document 1 {REFUSED[file]}"
    ]


# The spec fields of Seldon Core 2's CRDs (operator/config/crd/bases, branch v2).
SELDON_SPEC_FIELDS = {
    "Model": {
        "artifactVersion",
        "dataflow",
        "dedicated",
        "explainer",
        "llm",
        "logger",
        "maxReplicas",
        "memory",
        "minReplicas",
        "modelType",
        "parameters",
        "preloaded",
        "replicas",
        "requirements",
        "schemaUri",
        "secretName",
        "server",
        "storageUri",
    },
    "Server": {
        "capabilities",
        "deploymentStrategy",
        "disableAutoUpdate",
        "extraCapabilities",
        "imageOverrides",
        "maxReplicas",
        "minReplicas",
        "podSpec",
        "replicas",
        "serverConfig",
        "statefulSetPersistentVolumeClaimRetentionPolicy",
    },
    "ServerConfig": {"podSpec", "volumeClaimTemplates"},
}
GPUPLACE_EXTENSIONS = {"Model": {"gpuMemory", "gpus"}, "Server": set(), "ServerConfig": set()}


def _parser_fields(kind: str) -> set[str]:
    return {info.alias or name for name, info in SPECS[kind].model_fields.items()}


@pytest.mark.parametrize("kind", sorted(SELDON_SPEC_FIELDS))
def test_the_parser_knows_every_seldon_field(kind: str) -> None:
    assert _parser_fields(kind) == SELDON_SPEC_FIELDS[kind] | GPUPLACE_EXTENSIONS[kind]


_ROW = re.compile(r"^\| (Model|Server|ServerConfig) \| `(\w+)` \| (used|warned) \|")


def test_the_docs_table_lists_every_field_as_the_parser_treats_it() -> None:
    rows = [
        match.groups()
        for line in (ROOT / "docs" / "cli.md").read_text().splitlines()
        if (match := _ROW.match(line))
    ]
    expected = [
        (kind, name, "warned" if unused_reason(SPECS[kind], name) else "used")
        for kind in SPECS
        for name in _parser_fields(kind)
    ]
    assert sorted(rows) == sorted(expected)
