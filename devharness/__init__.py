"""Development tooling that ``make demo`` and the tests share — never part of the product.

- :mod:`devharness.cluster`: a local gpuplace cluster (the scheduler, and per replica a real
  MLServer and a real agent) as processes on 127.0.0.1;
- :mod:`devharness.scheduler`: ``gpuplace scheduler`` as a child process;
- :mod:`devharness.mlserver`: MLServer's own virtualenv (``.venv-mlserver``) and MLServer
  processes;
- :mod:`devharness.fake_nvml`: the fake ``libnvidia-ml.so.1``, built from the test fake's C
  source ``tests/fakes/fake_nvml.c`` into ``devharness/build/`` (git-ignored), and the
  simulated GPUs it serves;
- :mod:`devharness.sklearn_models`: tiny iris classifiers, trained in MLServer's venv;
- :mod:`devharness.wait`: poll-until-deadline helpers.

It may import the product packages (``contract``, ``agent``, ``scheduler_service``,
``gpuplace``, ``protos``) but nothing under ``tests``; the product packages never import it,
the wheel and the Docker image do not ship it. Scripts and the tests import it from the
repository root (``scripts/*.py`` put the root on ``sys.path``; pytest's ``pythonpath = ["."]``).
"""
