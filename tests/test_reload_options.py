"""The `--reload-*` options: refused without `--reload` instead of silently ignored."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from aserve.arguments import option_names
from aserve.cli import without_reload
from aserve.config import Config
from tests.support.procs import assert_usage_error

APP = "tests.support.apps.wsgi_apps:app"
HINTS = typing.get_type_hints(Config)
RELOAD_OPTIONS = [f.name for f in dataclasses.fields(Config) if f.name.startswith("reload_")]


def changed(setting: str) -> object:
    """A value of `setting` other than its default."""
    hint = HINTS[setting]
    if hint is bool:
        return True
    if typing.get_origin(hint) is list:
        return ["src"]
    return getattr(Config(), setting) * 2


def arguments(setting: str) -> list[str]:
    """The command-line arguments that set `setting` to `changed(setting)`."""
    flag, value = option_names()[setting], changed(setting)
    if value is True:
        return [flag]
    if isinstance(value, list):
        return [flag, *value]
    return [flag, str(value)]


@pytest.mark.parametrize("setting", RELOAD_OPTIONS)
def test_a_reload_option_without_reload_is_a_usage_error(setting: str) -> None:
    line = assert_usage_error([*arguments(setting), APP])
    assert line == f"aserve: error: {option_names()[setting]} does nothing without --reload"


def test_every_reload_option_given_is_named() -> None:
    line = assert_usage_error(["--reload-dir", "src", "--reload-exclude", "static", APP])
    assert line == "aserve: error: --reload-dir, --reload-exclude do nothing without --reload"


@pytest.mark.parametrize("setting", RELOAD_OPTIONS)
def test_with_reload_the_options_are_taken(setting: str) -> None:
    assert without_reload(Config(reload=True).replace(**{setting: changed(setting)})) == []


def test_their_defaults_are_not_refused() -> None:
    assert without_reload(Config()) == []
    # A default given on the command line changes nothing: there is nothing to refuse.
    assert without_reload(Config(reload_delay=Config().reload_delay)) == []
