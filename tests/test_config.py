"""`aserve.config.Config`: validation, the CLI generated from its fields, and each limit's and
timeout's default as the README documents it and config.py explains it."""

from __future__ import annotations

import dataclasses
import inspect
import math
import pickle
import re
import typing
from pathlib import Path

import pytest

import aserve.config
from aserve.cli import build_parser, parse
from aserve.config import Config
from aserve.errors import ConfigError
from aserve.protocols.http11 import Limits
from aserve.server import request_limits
from tests.support.procs import ROOT

FIELDS = {field.name: field for field in dataclasses.fields(Config)}
CLI_FIELDS = [field for field in FIELDS.values() if field.metadata["cli"]]
HINTS = typing.get_type_hints(Config)
DEFAULTS = Config()
# The settings whose number is a policy: the README's options table and config.py explain them.
LIMITS = [name for name in FIELDS if name.startswith(("limit_", "timeout_"))]


# Those without a comment of their own above them in aserve/config.py yet.
def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# -- validation --------------------------------------------------------------------------------

INVALID: list[tuple[dict[str, object], str]] = [
    ({"port": -1}, "--port must be between 0 and 65535, not -1"),
    ({"port": 65536}, "--port must be between 0 and 65535, not 65536"),
    ({"fd": -1}, "--fd must be a non-negative file descriptor, not -1"),
    ({"uds": "/tmp/aserve.sock", "fd": 3}, "--uds and --fd cannot be used together"),
    ({"threads": 0}, "--threads must be at least 1, not 0"),
    ({"workers": 0}, "--workers must be at least 1, not 0"),
    ({"workers": 2, "reload": True}, "--workers cannot be used with --reload"),
    ({"workers": 2, "reload_browser": True}, "--workers cannot be used with --reload"),
    ({"workers": 2, "server": "wsgiref"}, "--workers needs --server aserve, not wsgiref"),
    ({"timeout_keep_alive": -0.5}, "--timeout-keep-alive cannot be negative"),
    ({"timeout_graceful_shutdown": -1.0}, "--timeout-graceful-shutdown cannot be negative"),
    ({"timeout_request_head": 0.0}, "--timeout-request-head must be more than 0"),
    ({"timeout_request_head": math.nan}, "--timeout-request-head must be more than 0"),
    ({"timeout_request_body": 0.0}, "--timeout-request-body must be more than 0"),
    ({"timeout_worker_start": 0.0}, "--timeout-worker-start must be more than 0"),
    ({"limit_request_body": -1}, "--limit-request-body cannot be negative"),
    ({"limit_concurrency": -1}, "--limit-concurrency cannot be negative"),
    ({"limit_pipeline": -1}, "--limit-pipeline cannot be negative"),
    ({"limit_drain": -1}, "--limit-drain cannot be negative"),
    ({"backlog": 0}, "--backlog must be at least 1"),
    ({"limit_request_line": 0}, "--limit-request-line must be at least 1"),
    ({"limit_request_fields": 0}, "--limit-request-fields must be at least 1"),
    ({"limit_request_field_size": 0}, "--limit-request-field-size must be at least 1"),
    ({"limit_request_head": 0}, "--limit-request-head must be at least 1"),
    ({"limit_buffer": 0}, "--limit-buffer must be at least 1"),
    ({"limit_body_buffer": 0}, "--limit-body-buffer must be at least 1"),
    ({"reload_delay": -0.01}, "--reload-delay must be between 0 and 10 seconds"),
    ({"reload_delay": 10.01}, "--reload-delay must be between 0 and 10 seconds"),
    ({"root_path": "app"}, "--root-path must start with '/' and not end with one, like /app"),
    ({"root_path": "/app/"}, "--root-path must start with '/' and not end with one, like /app"),
    ({"server": "wsgiref", "interface": "asgi"}, "--server wsgiref serves WSGI apps only"),
    ({"server": "wsgiref", "reload_browser": True}, "--reload-browser needs --server aserve"),
]


@pytest.mark.parametrize(
    ("changes", "message"), INVALID, ids=[" ".join(map(str, c.items())) for c, _ in INVALID]
)
def test_invalid_settings_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config(**changes)  # type: ignore[arg-type]


def test_every_setting_post_init_checks_is_tried() -> None:
    checks = (Config._check_numbers, Config._check_choices, Config._check_workers)
    source = "".join(inspect.getsource(check) for check in checks)
    tables = {*aserve.config._NON_NEGATIVE, *aserve.config._POSITIVE, *aserve.config._AT_LEAST_ONE}
    checked = set(re.findall(r"self\.(\w+)", source)) | tables
    assert checked & set(FIELDS) == {name for changes, _ in INVALID for name in changes}


VALID: list[dict[str, object]] = [
    {"port": 0},
    {"port": 65535},
    {"fd": 0},
    {"uds": "/tmp/aserve.sock"},
    {"threads": 1},
    {"timeout_keep_alive": 0.0},
    {"timeout_graceful_shutdown": 0.0},
    {"timeout_request_head": 0.001},
    {"timeout_request_body": 0.001},
    {"limit_request_body": 0},
    {"limit_concurrency": 0},
    {"limit_pipeline": 0},
    {"limit_drain": 0},
    {"backlog": 1},
    {"limit_request_line": 1},
    {"limit_request_fields": 1},
    {"limit_request_field_size": 1},
    {"limit_request_head": 1},
    {"limit_buffer": 1},
    {"limit_body_buffer": 1},
    {"reload_delay": 0.0},
    {"reload_delay": 10.0},
    {"root_path": ""},
    {"root_path": "/app"},
    {"root_path": "/a/b"},
    {"server": "wsgiref", "interface": "wsgi"},
    {"server": "wsgiref", "interface": "auto"},
]


@pytest.mark.parametrize(
    "changes", VALID, ids=[" ".join(map(str, changes.items())) for changes in VALID]
)
def test_edge_values_are_accepted(changes: dict[str, object]) -> None:
    config = Config(**changes)  # type: ignore[arg-type]
    assert {name: getattr(config, name) for name in changes} == changes


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.port = 1  # type: ignore[misc]


def test_config_survives_pickling() -> None:
    # The reload supervisor hands the settings to its workers pickled.
    config = Config(port=0, lifespan="off", reload_dirs=["src"], limit_buffer=1024)
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config
    assert copy is not config


def test_replace_validates_again() -> None:
    assert DEFAULTS.replace(port=9000).port == 9000
    assert DEFAULTS.port == 8000
    with pytest.raises(ConfigError, match="--port must be between 0 and 65535"):
        DEFAULTS.replace(port=70000)
    with pytest.raises(ConfigError, match="--uds and --fd cannot be used together"):
        Config(uds="/tmp/aserve.sock").replace(fd=3)


# -- the generated CLI -------------------------------------------------------------------------

# A value other than the default, for the settings that default to nothing or to text.
SAMPLES: dict[str, object] = {
    "host": "0.0.0.0",
    "uds": "/tmp/aserve.sock",
    "fd": 3,
    "root_path": "/api",
    "env_file": ".env",
    "ssl_certfile": "cert.pem",
    "ssl_keyfile": "key.pem",
    "ssl_keyfile_password": "secret",
    "ssl_ca_certs": "ca.pem",
    "ssl_ciphers": "ECDHE+AESGCM",
    "forwarded_allow_ips": "10.0.0.0/8,192.168.1.1",
}


def sample(name: str) -> object:
    if name in SAMPLES:
        return SAMPLES[name]
    default = getattr(DEFAULTS, name)
    assert isinstance(default, int | float), name
    return default + 1


def parsed(*args: str) -> Config:
    return parse([*args, "app"])[1]


@pytest.mark.parametrize("field", CLI_FIELDS, ids=lambda field: field.name)
def test_every_setting_has_its_option(field: dataclasses.Field[object]) -> None:
    name, hint = field.name, HINTS[field.name]
    if hint is bool:
        assert getattr(parsed(flag(name)), name) is True
        assert getattr(parsed("--no-" + name.replace("_", "-")), name) is False
    elif typing.get_origin(hint) is list:
        # One value an option, repeated: `--reload-dir a --reload-dir b`.
        singular = flag(name).removesuffix("s")
        assert getattr(parsed(singular, "a", singular, "b"), name) == ["a", "b"]
    elif typing.get_origin(hint) is typing.Literal:
        for choice in typing.get_args(hint):
            assert getattr(parsed(flag(name), choice), name) == choice
    else:
        value = sample(name)
        assert getattr(parsed(flag(name), str(value)), name) == value


@pytest.mark.parametrize(
    "field",
    [field for field in CLI_FIELDS if typing.get_origin(HINTS[field.name]) is typing.Literal],
    ids=lambda field: field.name,
)
def test_enumerated_settings_offer_their_choices(
    field: dataclasses.Field[object], capsys: pytest.CaptureFixture[str]
) -> None:
    choices = typing.get_args(HINTS[field.name])
    assert "{" + ",".join(choices) + "}" in build_parser().format_help()
    with pytest.raises(SystemExit) as exited:
        parsed(flag(field.name), "bogus")
    assert exited.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def help_defaults() -> dict[str, str]:
    """Each option of `aserve --help` and the default its help text shows."""
    entries: list[list[str]] = []
    for line in build_parser().format_help().partition("\noptions:\n")[2].splitlines():
        if line.startswith("  -"):
            entries.append([line])
        elif entries:
            entries[-1].append(line)
    shown: dict[str, str] = {}
    for entry in entries:
        invocation = re.split(r"\s{2,}", entry[0].strip(), maxsplit=1)[0]
        default = re.search(r"\(default: (.*)\)$", " ".join(" ".join(entry).split()))
        for option in re.findall(r"--[a-z][a-z-]*", invocation):
            if default is not None:
                shown[option] = default.group(1)
    return shown


@pytest.mark.parametrize("field", CLI_FIELDS, ids=lambda field: field.name)
def test_help_shows_the_dataclass_default(field: dataclasses.Field[object]) -> None:
    option = flag(field.name)
    if typing.get_origin(HINTS[field.name]) is list:
        option = option.removesuffix("s")
    default = str(getattr(DEFAULTS, field.name))
    if field.name == "workers":  # the CLI reads the environment first, as uvicorn's does
        default = f"$WEB_CONCURRENCY, else {default}"
    assert help_defaults()[option] == default


@pytest.mark.parametrize(
    ("alias", "name"), [("--flow-buffer", "limit_buffer"), ("--drain-limit", "limit_drain")]
)
def test_former_spellings_still_set_the_new_settings(alias: str, name: str) -> None:
    assert alias in FIELDS[name].metadata["aliases"]
    assert getattr(parsed(alias, "4096"), name) == 4096
    assert getattr(parsed(flag(name), "4096"), name) == 4096


# -- each limit's default and its documentation ------------------------------------------------


def readme_options() -> dict[str, str]:
    """The README's options table: each option and its default, backticks removed."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("| option | default | meaning |")
    table: dict[str, str] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        # A \| in a cell is a pipe between an option's choices, not between columns.
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        option = re.match(r"`(--[a-z][a-z-]*)", cells[0])
        assert option is not None, line
        table[option.group(1)] = cells[1].strip("`")
    return table


@pytest.mark.parametrize("name", LIMITS)
def test_the_readme_gives_each_limits_default(name: str) -> None:
    documented = readme_options()
    assert flag(name) in documented, f"{flag(name)} is not in the README's options table"
    assert float(documented[flag(name)]) == FIELDS[name].default


@pytest.mark.parametrize("name", LIMITS)
def test_config_py_explains_each_limit_above_it(name: str) -> None:
    lines = Path(aserve.config.__file__).read_text().splitlines()
    (index,) = [i for i, line in enumerate(lines) if line.startswith(f"    {name}: ")]
    assert lines[index - 1].strip().startswith("#"), f"no comment above {name} in config.py"


def test_every_protocol_limit_is_a_setting() -> None:
    for field in dataclasses.fields(Limits):
        assert "limit_" + field.name in FIELDS, field.name


def test_the_protocol_limits_of_the_defaults_are_the_settings_defaults() -> None:
    limits = request_limits(Config())
    for field in dataclasses.fields(Limits):
        assert getattr(limits, field.name) == FIELDS["limit_" + field.name].default, field.name
