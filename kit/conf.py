"""Loading frozen config dataclasses from TOML: unknown keys are errors with a clear message."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

import pydantic
from pydantic import ConfigDict, TypeAdapter

T = TypeVar("T")

FROZEN = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ConfigError(Exception):
    """A configuration file is missing, unreadable or invalid; the message says where."""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def build(cls: type[T], data: dict[str, Any], source: str) -> T:
    try:
        return TypeAdapter(cls).validate_python(data)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            unknown = err["type"] in ("extra_forbidden", "unexpected_keyword_argument")
            what = "unknown key" if unknown else err["msg"]
            problems.append(f"  {where}: {what}")
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(problems)) from None


def load(cls: type[T], path: Path) -> T:
    return build(cls, read_toml(path), str(path))
