"""The gpuplace scheduler: places models on capable replicas and tracks them."""
