"""The client-side commands: model, server, render, explain."""

from __future__ import annotations

from typing import Any

from gpuplace.commands import explain, model, processes, render_cmd, server


def register(commands: Any) -> None:
    processes.register(commands)
    model.register(commands)
    server.register(commands)
    render_cmd.register(commands)
    explain.register(commands)
