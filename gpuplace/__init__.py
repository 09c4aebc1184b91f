"""gpuplace: place ML models on GPU inference-server replicas that can really hold them.

This package is the CLI, the top floor: nothing below imports it."""

from contract import __version__

__all__ = ["__version__"]
