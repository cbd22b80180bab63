"""Settings declared once, on their dataclass fields; click options generated from them.

A setting used to be written four times (field, click option, function signature, mapping)
and the copies drifted. Now ``settings.py`` declares each one with ``setting(...)``: default,
type and range, help, group, option and env var. This module turns those declarations into
the options of a command (``settings_command``), shows them by group in --help
(``GroupedCommand``) and maps the parsed values back to constructor arguments (``values``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

import click

WATCHER, GATEWAY, AUTOSCALING, ENVIRONMENTS, DOCKER = "watcher", "gateway", "autoscaling", "environments", "docker"
TITLES = {
    WATCHER: "Watcher options",
    GATEWAY: "Gateway options",
    AUTOSCALING: "Autoscaling options",
    ENVIRONMENTS: "Model environment options",
    DOCKER: "Docker/Swarm options (--runtime docker or swarm)",
}
OTHER = "Other options"


@dataclass(frozen=True)
class Option:
    """How one setting is set: ``flag`` on the command line, else ``envvar``, else the field's default."""

    flag: str
    group: str
    help: str
    envvar: str
    type: click.ParamType | None = None  # None: click's, from the default
    metavar: str | None = None
    show_default: bool = True
    invert: bool = False  # a --no-... flag turning a setting that defaults to True off
    multiple: bool = False
    parse: Callable[[Any], Any] | None = None  # the option's value -> the field's (after the type)
    as_text: Callable[[Any], str] | None = None  # the field's default as typed on the command line

    @property
    def name(self) -> str:
        """The parameter name the command receives (click's, from the flag)."""
        return self.flag.lstrip("-").replace("-", "_")


def setting(default: Any = MISSING, *, flag: str, group: str, help: str = "", envvar: str | None = None,
            default_factory: Any = MISSING, **option: Any) -> Any:
    """A dataclass field carrying its option. The env var is MLOPS_GATEWAY_<FLAG> for the
    gateway's options and MLOPS_AUTOSERVE_<FLAG> for the others, unless one already existed."""
    prefix = "MLOPS_GATEWAY_" if group == GATEWAY else "MLOPS_AUTOSERVE_"
    envvar = envvar or prefix + flag.lstrip("-").replace("-", "_").upper()
    return field(default=default, default_factory=default_factory,
                 metadata={"option": Option(flag, group, help, envvar, **option)})


Declared = tuple[Field, Option]


def declared(cls: type, skip: Iterable[str] = ()) -> list[Declared]:
    """The fields of ``cls`` that are options, in declaration order (but the ``skip`` names)."""
    skipped = set(skip)
    return [(f, f.metadata["option"]) for f in fields(cls) if "option" in f.metadata and f.name not in skipped]


def flag_of(cls: type, name: str) -> str:
    """The option of field ``name``: errors about a setting name what the user typed."""
    return next(o.flag for f, o in declared(cls) if f.name == name)


def default_of(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def values(cls: type, params: dict[str, Any], skip: Iterable[str] = ()) -> dict[str, Any]:
    """Constructor arguments of ``cls`` from a command's parsed options. An empty value
    (``--webhook-url ''``) means "not set" for a setting whose default is None."""
    kwargs = {}
    for f, option in declared(cls, skip):
        value = params[option.name]
        if option.invert:
            value = not value
        if value == "" and default_of(f) is None:
            value = None
        if option.parse is not None and value is not None:
            value = option.parse(value)
        kwargs[f.name] = value
    return kwargs


def _click_option(f: Field, option: Option) -> Callable:
    default = default_of(f)
    common = {"help": option.help, "metavar": option.metavar, "envvar": option.envvar, "show_envvar": True}
    if isinstance(default, bool):
        return click.option(option.flag, is_flag=True, default=default != option.invert, **common)
    if option.as_text is not None:
        default = option.as_text(default)
    return click.option(option.flag, type=option.type, default=default, multiple=option.multiple,
                        show_default=option.show_default and default is not None, **common)


class GroupedCommand(click.Command):
    """A command whose --help lists its options in sections, one per group (click has none)."""

    def __init__(self, *args: Any, groups: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.groups = groups  # parameter name -> group

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(TITLES.get(self.groups.get(param.name or ""), OTHER), []).append(record)
        for title, records in sections.items():
            with formatter.section(title):
                formatter.write_dl(records)


def settings_command(options: list[Declared], shared: dict[str, Callable] | None = None,
                     **attrs: Any) -> Callable[[Callable], click.Command]:
    """A command taking every declared option, ordered by group. ``shared``: ready-made
    options (field name -> decorator) used instead, e.g. the --tracking-uri of every command."""
    shared = shared or {}
    order = list(TITLES)
    ordered = sorted(options, key=lambda item: order.index(item[1].group))
    names = [o.name for _, o in ordered]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise TypeError(f"options declared twice: {sorted(duplicates)}")

    def decorate(fn: Callable) -> click.Command:
        for f, option in reversed(ordered):
            fn = (shared[f.name] if f.name in shared else _click_option(f, option))(fn)
        return click.command(cls=GroupedCommand, groups={o.name: o.group for _, o in ordered}, **attrs)(fn)

    return decorate


class Names(click.ParamType):
    """``a,b`` as ``frozenset({"a", "b"})`` (an empty value: none)."""

    name = "A,B"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> frozenset[str]:
        if isinstance(value, frozenset):
            return value
        return frozenset(v.strip() for v in str(value).split(",") if v.strip())
