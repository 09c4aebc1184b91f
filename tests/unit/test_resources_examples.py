"""The files in examples/ parse, render to valid manifests and place as their comments say."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate

from gpuplace.nodes import explain_bundle
from gpuplace.render import RenderSettings, render_bundle
from gpuplace.resources import load_files, to_model_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_example_models() -> None:
    bundle = load_files([EXAMPLES / "models.yaml"])
    specs = {model.name: to_model_spec(model) for model in bundle.models}
    assert set(specs) == {"iris", "llama3"}
    assert (specs["llama3"].gpu_memory, specs["llama3"].replicas) == ("20Gi", 2)
    assert bundle.warnings == []


def test_example_servers_render_valid_manifests() -> None:
    rendered = render_bundle(load_files([EXAMPLES / "servers.yaml"]), RenderSettings())
    assert rendered.warnings == []
    version = kubernetes_validate.latest_version()
    for manifest in rendered.manifests:
        kubernetes_validate.validate(manifest, version, strict=True)
    agent = next(
        c
        for c in rendered.manifests[0]["spec"]["template"]["spec"]["containers"]
        if c["name"] == "agent"
    )
    capabilities = {e["name"]: e.get("value") for e in agent["env"]}["SELDON_SERVER_CAPABILITIES"]
    assert capabilities == "mlserver,huggingface,sklearn,xgboost,model-on-gpu"


def test_example_server_fits_only_the_big_gpu_node() -> None:
    placement = explain_bundle(load_files([EXAMPLES / "servers.yaml", EXAMPLES / "nodes.yaml"]))[0]
    assert placement.fitting == ["gpu-a100-1"]
    assert placement.warnings == []
