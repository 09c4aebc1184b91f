"""One flag per setting, generated from a pydantic-settings model.

Every setting of the scheduler and the agent is both an environment variable and a flag;
the flag wins. `--help` lists each with its description, environment variable and default,
so the help can never drift from the settings model.
"""

from __future__ import annotations

import argparse
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def _env_name(settings_cls: type[BaseSettings], field: str) -> str:
    info = settings_cls.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, str):
        return alias
    choices = getattr(alias, "choices", None)
    if choices:
        return " or ".join(str(choice) for choice in choices)
    prefix = settings_cls.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def add_settings_arguments(
    parser: argparse.ArgumentParser, settings_cls: type[BaseSettings]
) -> None:
    """Add `--field-name` for every field of `settings_cls` (value kept as a string)."""
    group = parser.add_argument_group("settings (flag > environment variable > default)")
    for field, info in settings_cls.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = "" if default in (None, "", [], ()) else f"; default {default}"
        group.add_argument(
            f"--{field.replace('_', '-')}",
            dest=f"setting_{field}",
            metavar=field.upper(),
            default=None,
            help=f"{info.description or field} [env {_env_name(settings_cls, field)}{shown}]",
        )


def settings_from_args(settings_cls: type[S], args: argparse.Namespace) -> S:
    """Build the settings from flags given on the command line, then the environment."""
    given: dict[str, Any] = {
        field: getattr(args, f"setting_{field}")
        for field in settings_cls.model_fields
        if getattr(args, f"setting_{field}", None) is not None
    }
    return settings_cls(**given)


def _field_of(settings_cls: type[BaseSettings], name: str) -> str | None:
    """The field a reported location stands for: its own name or one of its aliases."""
    if name in settings_cls.model_fields:
        return name
    for field, info in settings_cls.model_fields.items():
        alias = info.validation_alias
        names = [alias] if isinstance(alias, str) else getattr(alias, "choices", None) or []
        if name in [str(choice) for choice in names]:
            return field
    return None


def describe_error(settings_cls: type[BaseSettings], error: ValidationError) -> str:
    """One line per bad setting, naming the flag and the environment variable."""
    lines = []
    for item in error.errors():
        if not item["loc"]:  # a rule across settings: its message names them
            lines.append(f"invalid settings: {item['msg'].removeprefix('Value error, ')}")
            continue
        reported = str(item["loc"][0])
        field = _field_of(settings_cls, reported)
        if field is None:
            lines.append(f"invalid setting {reported} = {item.get('input')!r}: {item['msg']}")
            continue
        env = _env_name(settings_cls, field)
        flag = f"--{field.replace('_', '-')}"
        lines.append(f"invalid setting {env} ({flag}) = {item.get('input')!r}: {item['msg']}")
    return "\n".join(lines)
