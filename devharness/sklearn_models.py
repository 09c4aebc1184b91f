"""Tiny real scikit-learn models (iris) for tests and the demo, trained in MLServer's venv.

gpuplace's own venv has no scikit-learn, and a pickle must be read by the scikit-learn that
wrote it, so training runs as a subprocess of the MLServer venv's python: this very file is
that subprocess's script (``python sklearn_models.py <jobs-json>``). Hence the module imports
only the standard library at the top; scikit-learn is imported inside :func:`_train_main`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

ModelKind = Literal["logistic", "tree", "constant"]

ARTIFACT_NAME = "model.joblib"
SKLEARN_IMPLEMENTATION = "mlserver_sklearn.SKLearnModel"

IRIS_ROW: tuple[float, float, float, float] = (5.1, 3.5, 1.4, 0.2)
"""The first iris sample (a setosa)."""
IRIS_ROW_CLASS = 0
"""What the ``logistic`` and ``tree`` models predict for :data:`IRIS_ROW`."""
CONSTANT_CLASS = 2
"""What a ``constant`` model predicts for every row (tells a swapped artifact apart)."""


@dataclass(frozen=True)
class TrainJob:
    """One model to train into ``dest`` (``dest/model.joblib``, optionally model-settings)."""

    dest: Path
    name: str
    with_settings: bool = True
    version: str | None = None
    kind: ModelKind = "logistic"


def model_settings(name: str, *, version: str | None = None) -> dict[str, Any]:
    """The model-settings.json MLServer needs to serve ``model.joblib`` next to it."""
    parameters: dict[str, Any] = {"uri": f"./{ARTIFACT_NAME}"}
    if version is not None:
        parameters["version"] = version
    return {"name": name, "implementation": SKLEARN_IMPLEMENTATION, "parameters": parameters}


def write_model_settings(dest: Path, name: str, *, version: str | None = None) -> Path:
    """Write ``dest/model-settings.json`` for an sklearn model; returns its path."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "model-settings.json"
    path.write_text(json.dumps(model_settings(name, version=version), indent=2) + "\n")
    return path


def train_iris_models(jobs: Sequence[TrainJob], *, venv: Path | None = None) -> list[Path]:
    """Train every job in one subprocess of MLServer's python (one scikit-learn import);
    returns each ``model.joblib`` path. Creates MLServer's venv if needed."""
    if not jobs:
        return []
    from devharness.mlserver import ensure_mlserver_venv, venv_bin

    mlserver = ensure_mlserver_venv(venv) if venv is not None else ensure_mlserver_venv()
    python = venv_bin(mlserver.parent.parent, "python")
    spec = [{**asdict(job), "dest": str(Path(job.dest).absolute())} for job in jobs]
    result = subprocess.run(
        [str(python), str(Path(__file__).resolve()), json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"training in {python} failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
    return [Path(job["dest"]) / ARTIFACT_NAME for job in spec]


def train_iris_model(
    dest: Path,
    name: str,
    with_settings: bool,
    *,
    version: str | None = None,
    kind: ModelKind = "logistic",
    venv: Path | None = None,
) -> Path:
    """Train a tiny iris classifier into ``dest/model.joblib`` and return that path.

    ``kind``: ``logistic`` (LogisticRegression) or ``tree`` (DecisionTree) predict
    :data:`IRIS_ROW_CLASS` for :data:`IRIS_ROW`; ``constant`` always predicts
    :data:`CONSTANT_CLASS`. With ``with_settings`` also writes ``dest/model-settings.json``
    (``implementation: mlserver_sklearn.SKLearnModel``, ``parameters.uri: ./model.joblib``,
    and ``parameters.version`` when given). Training runs in MLServer's venv python.
    """
    job = TrainJob(Path(dest), name, with_settings, version, kind)
    return train_iris_models([job], venv=venv)[0]


# --------------------------------------------------------------------------------------------
# The subprocess side: runs under MLServer's python, where scikit-learn and joblib exist.
# --------------------------------------------------------------------------------------------


def _train_main(spec_json: str) -> None:
    import joblib  # type: ignore[import-not-found, import-untyped, unused-ignore]
    from sklearn.datasets import load_iris  # type: ignore[import-not-found, unused-ignore]
    from sklearn.dummy import DummyClassifier  # type: ignore[import-not-found, unused-ignore]
    from sklearn.linear_model import (  # type: ignore[import-not-found, unused-ignore]
        LogisticRegression,
    )
    from sklearn.tree import DecisionTreeClassifier  # type: ignore[import-not-found, unused-ignore]

    features, labels = load_iris(return_X_y=True)
    for job in json.loads(spec_json):
        kind = job["kind"]
        if kind == "logistic":
            model: Any = LogisticRegression(max_iter=1000)
        elif kind == "tree":
            model = DecisionTreeClassifier(max_depth=3, random_state=0)
        elif kind == "constant":
            model = DummyClassifier(strategy="constant", constant=CONSTANT_CLASS)
        else:
            raise SystemExit(f"unknown model kind {kind!r}")
        model.fit(features, labels)
        dest = Path(job["dest"])
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / f".{ARTIFACT_NAME}.tmp"
        joblib.dump(model, tmp)
        tmp.replace(dest / ARTIFACT_NAME)  # atomic: a running MLServer never sees half a file
        if job["with_settings"]:
            write_model_settings(dest, job["name"], version=job["version"])


if __name__ == "__main__":
    _train_main(sys.argv[1])
