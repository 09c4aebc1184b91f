"""The contract both processes and the CLI share, at the bottom of the import graph.

Protocol values and their one protobuf conversion, quantities, names, spec rules, task and
settings helpers. It imports nothing first-party but `protos` (the wire format) and
`placement` (the pure core); `make lint` checks this with import-linter.
"""

__version__ = "0.1.0"
