#!/usr/bin/env bash
# Run on a machine with an NVIDIA GPU and driver: the gpu-marked tests over real NVML.
# Prints the devices NVML sees, then the tests; the output goes in docs/gpu-validation.md.
set -euo pipefail
cd "$(dirname "$0")/.."
make venv >/dev/null
nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.free --format=csv || true
.venv/bin/python - <<'PY'
from agent.gpus import NvmlGpuProbe
for device in NvmlGpuProbe().devices():
    print(device)
PY
.venv/bin/python -m pytest -m gpu -v -rA tests/
