"""Command-line options generated from `Config`'s fields, one per setting with its help and
default: the `aserve` command's, and those runserver on aserve adds to Django's."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection
from typing import Any

from aserve.config import Config


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    skip: Collection[str] = (),
    *,
    runserver: bool = True,
) -> list[str]:
    """An option for each CLI setting not in `skip`; the names of the settings added. With
    `runserver` (the default: the Django command passes only `skip`), the settings runserver
    on aserve cannot honour are left out; the `aserve` command passes `runserver=False`."""
    hints = typing.get_type_hints(Config)
    flags = option_names()
    added = []
    for field in dataclasses.fields(Config):
        meta = field.metadata
        if not meta["cli"] or field.name in skip or (runserver and not meta["runserver"]):
            continue
        flag = flags[field.name]
        hint = hints[field.name]
        kind, choices = _field_type(hint)
        kwargs: dict[str, Any] = {"dest": field.name, "help": meta["help"]}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = field.default
        elif typing.get_origin(hint) is list:
            # argparse's append copies its default before appending: [] is never shared.
            kwargs.update(action="append", type=kind, default=[], metavar=meta["metavar"])
        else:
            kwargs.update(type=kind, default=field.default, metavar=meta["metavar"])
            if choices is not None:
                kwargs["choices"] = choices
                kwargs["metavar"] = None
        parser.add_argument(flag, *meta["aliases"], **kwargs)
        added.append(field.name)
    return added


def option_names() -> dict[str, str]:
    """Each setting's option: `--reload-dir` for `reload_dirs`, a list given one value at a
    time."""
    names = {}
    for name, hint in typing.get_type_hints(Config).items():
        flag = "--" + name.replace("_", "-")
        names[name] = flag.removesuffix("s") if typing.get_origin(hint) is list else flag
    return names


def _field_type(hint: Any) -> tuple[Any, tuple[str, ...] | None]:
    """The scalar type of a setting and its allowed values (for Literal settings)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        return str, typing.get_args(hint)
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], None
    return hint, None
