"""The `fastserve` command. Its options are generated from `Config`'s fields, so a setting is
spelled once (in config.py). Option names follow uvicorn's wherever the meaning is the same,
so `uvicorn` can be replaced by `fastserve` in a command line."""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.machinery
import platform
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

import click

from . import __version__
from .config import Config, config_fields
from .main import serve_options
from .protocols import REGISTRIES

_HINTS = typing.get_type_hints(Config)


def _base_type(hint: Any) -> Any:
    """`int | None` -> int, `Literal[...]` -> str, `list[str]` -> str."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    if origin is typing.Literal:
        return str
    if origin is list:
        return typing.get_args(hint)[0]
    return hint


def option_for(f: dataclasses.Field[Any]) -> Callable[[Any], Any]:
    meta = f.metadata
    name = meta.get("cli", "--" + f.name.replace("_", "-"))
    base = _base_type(_HINTS[f.name])
    default = f.default if f.default is not dataclasses.MISSING else None
    kwargs: dict[str, Any] = {
        "help": meta["help"],
        "show_default": default not in (None, ""),
        # FASTSERVE_<NAME>, else UVICORN_<NAME>: a container that configured uvicorn through
        # its environment keeps working when its command says fastserve instead.
        "envvar": [f"FASTSERVE_{f.name.upper()}", f"UVICORN_{f.name.upper()}"],
    }
    if base is bool and not meta.get("takes_value"):
        flag = f"{name}/--no-{name[2:]}"
        return click.option(flag, f.name, default=default, **kwargs)
    if meta.get("multiple"):
        return click.option(name, f.name, multiple=True, default=(), **kwargs)
    registry = REGISTRIES.get(f.name)
    if registry is not None:
        # Not a click.Choice: the registry checks the name at startup (a ConfigError, exit 3,
        # as for Python's run()), and warns once for the uvicorn names it substitutes.
        kwargs["metavar"] = "[" + "|".join(registry.names()) + "]"
    elif "choices" in meta:
        kwargs["type"] = click.Choice(meta["choices"])
    elif base in (int, float):
        kwargs["type"] = base
    elif base is bool:  # `--name true|false`, where uvicorn spells it that way
        kwargs["type"] = click.BOOL
    return click.option(name, f.name, default=default, **kwargs)


# `--help` shows the options in these groups, in this order. A field belongs to the first
# group with a pattern (fnmatch, on the field name) that matches it; a new field that matches
# none lands in OTHER, which tests/test_cli.py refuses: its author picks a group here.
HELP_GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("Binding", ("host", "port", "uds", "fd", "backlog", "reuse_port")),
    (
        "Application",
        ("app_dir", "factory", "interface", "lifespan", "root_path", "env_file", "reset_*"),
    ),
    ("Protocols", ("loop", "http", "http2*", "ws", "ws_*", "h11_*", "eager_start")),
    ("Response headers and CORS", ("server_header", "date_header", "headers", "cors_*")),
    (
        "Workers",
        ("workers*", "preload", "pid", "listen_file", "gc_tune", "timeout_worker_*", "limit_max_*"),
    ),
    ("Limits and timeouts", ("limit_*", "timeout_*")),
    ("TLS", ("ssl_*",)),
    ("Proxies", ("proxy_*", "forwarded_*")),
    ("Logging", ("log_*", "access_log*", "use_colors")),
    ("Metrics", ("metrics*",)),
    ("Development", ("reload*",)),
    ("General", ("help", "version")),
]
OTHER = "Other options"

ENVIRONMENT_HELP = """\b
Environment:
  FASTSERVE_<OPTION>  any option, e.g. FASTSERVE_PORT=9000, FASTSERVE_ACCESS_LOG=false
                      (a repeatable option: values separated by spaces); APP: FASTSERVE_APP
  UVICORN_<OPTION>    the same, for a deployment configured for uvicorn: read when the
                      FASTSERVE_ one is not set (UVICORN_APP, UVICORN_PORT...)
  WEB_CONCURRENCY     the number of workers when --workers is not given (else 1)
  FORWARDED_ALLOW_IPS the default of --forwarded-allow-ips (else 127.0.0.1,::1)
A command-line option wins over all of them. Coming from uvicorn:
docs/migrating-from-uvicorn.md (every uvicorn option, variable and API)."""


def help_place(name: str) -> tuple[str, int]:
    """The --help group of the option for the Config field (or click parameter) `name`, and
    the index of the pattern that put it there (the order within the group)."""
    for title, patterns in HELP_GROUPS:
        for index, pattern in enumerate(patterns):
            if fnmatch.fnmatchcase(name, pattern):
                return title, index
    return OTHER, 0


class GroupedCommand(click.Command):
    """A command whose --help lists its options by HELP_GROUPS (click has no option groups)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[int, tuple[str, str]]]] = {t: [] for t, _ in HELP_GROUPS}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or isinstance(param, click.Argument):
                continue
            title, index = help_place("help" if "--help" in param.opts else param.name or "")
            sections.setdefault(title, []).append((index, record))
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):  # sorted() is stable: declaration order next
                    formatter.write_dl([record for _, record in sorted(rows, key=lambda r: r[0])])


def hot_path_compiled() -> bool:
    """Whether the protocol modules run compiled (a wheel built with mypyc, see setup.py)."""
    from .protocols import http1

    return http1.__file__ is not None and http1.__file__.endswith(
        tuple(importlib.machinery.EXTENSION_SUFFIXES)
    )


def build_info() -> str:
    build = "compiled" if hot_path_compiled() else "pure Python"
    try:
        import zttp  # noqa: F401

        http2 = "HTTP/2"
    except ImportError:
        http2 = "no HTTP/2 (install fastserve[standard])"
    return f"{platform.python_implementation()} {platform.python_version()}, {http2}, {build}"


def build_command() -> click.Command:
    def command(app: str, **options: Any) -> None:
        for key, value in options.items():
            if isinstance(value, tuple):
                options[key] = list(value)
        sys.exit(serve_options(app, options))

    cmd: Any = command
    for f in reversed(config_fields()):
        cmd = option_for(f)(cmd)
    cmd = click.version_option(
        __version__, prog_name="fastserve", message=f"%(prog)s %(version)s ({build_info()})"
    )(cmd)
    cmd = click.argument("app", envvar=["FASTSERVE_APP", "UVICORN_APP"])(cmd)
    built: click.Command = click.command(
        cls=GroupedCommand,
        context_settings={"show_default": True},
        help="Serve the ASGI application APP ('module:attribute').",
        epilog=ENVIRONMENT_HELP,
    )(cmd)
    return built


main = build_command()
