"""The gpuplace agent: a sidecar next to one inference-server replica."""
