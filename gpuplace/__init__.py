"""gpuplace: place ML models on GPU inference-server replicas that can really hold them."""

__version__ = "0.1.0"
