"""Settings declared once, as typed dataclass fields with a default and a help text, and the
command lines generated from them (a small field walker, no argparse table to keep in sync).

    @dataclass(frozen=True)
    class RunConfig:
        epochs: int = setting(10, "epochs to train")
        data_dir: str = setting("./data", "where data sets are read (and downloaded to)")

    parser = OneLineParser(prog="python -m my.tool")
    add_fields(parser, RunConfig)            # --epochs, --data-dir with types, defaults, help
    cfg = RunConfig(**fields_from(parser.parse_args(argv), RunConfig))

Types understood: ``int``, ``float``, ``str``, ``bool`` (``--x/--no-x``; a ``flag`` name in the
metadata renames both), ``X | None`` and ``tuple[float, ...]`` / ``tuple[str, ...]`` (comma
separated on the command line). Parsing errors raise :class:`ConfigError` (one line naming the
flag and the value); only a ``main`` turns that into exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any


class ConfigError(ValueError):
    """Bad user input: one line naming the setting (or flag) and the offending value."""


def bad(name: str, value: Any, why: str) -> ConfigError:
    """``invalid --flag 'x': why`` for a flag, ``invalid field='x': why`` for a config field."""
    sep = " " if name.startswith("--") else "="
    return ConfigError(f"invalid {name}{sep}{value!r}: {why}")


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    cli: bool = True,
    metavar: str | None = None,
    known: Callable[[], Iterable[str]] | None = None,
) -> Any:
    """A dataclass field with its help text; ``cli=False`` keeps it off command lines; ``known``
    lists the valid names (a registry's ``names``) for the help text."""
    meta = {"help": help, "flag": flag, "cli": cli, "metavar": metavar, "known": known}
    if isinstance(default, list | dict | set):
        raise TypeError("use an immutable default (a tuple) for a setting")
    return dataclasses.field(default=default, metadata=meta)


def same_as(cls: type, name: str, **overrides: Any) -> Any:
    """Re-declare the setting ``name`` of ``cls`` (same default and help) in another config, so
    that a setting shared by two configs is still written once."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = {**f.metadata, **{k: v for k, v in overrides.items() if k != "default"}}
    return dataclasses.field(default=overrides.get("default", f.default), metadata=meta)


def flag_of(name: str, f: dataclasses.Field | None = None) -> str:
    custom = f.metadata.get("flag") if f is not None else None
    return "--" + (custom or name.replace("_", "-"))


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def has_type(value: Any, tp: Any) -> bool:
    """Whether a value read from JSON fits a setting's type: a list for a tuple, ``null`` only
    where the setting is optional, and a boolean never for a number (Python's ``bool`` is an
    ``int``, so ``true`` would otherwise pass as 1)."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        return optional
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        return isinstance(value, list | tuple) and all(has_type(v, item) for v in value)
    if base is bool or isinstance(value, bool):
        return base is bool and isinstance(value, bool)
    if base is float:
        return isinstance(value, int | float)
    return isinstance(value, base)


def typed_value(flag: str, key: str, text: str, tp: Any) -> Any:
    """The value of a ``KEY=VALUE`` item given to ``flag`` for its setting's type (bool, int,
    float, str, optional)."""
    base, optional = _unwrap_optional(tp)
    if optional and text.lower() == "none":
        return None
    try:
        if base is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if base in (int, float, str):
            return base(text)
    except ValueError:
        raise bad(flag, f"{key}={text}", f"not a valid {base.__name__}") from None
    raise bad(flag, f"{key}={text}", "this setting cannot be fixed from the command line")


def _list_parser(flag: str, item: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        items = [t.strip() for t in text.split(",")]
        if not text.strip() or any(t == "" for t in items):
            raise argparse.ArgumentTypeError(
                str(bad(flag, text, "expected a comma-separated list such as 0.6,0.7"))
            )
        out = []
        for t in items:
            try:
                out.append(item(t))
            except ValueError:
                raise argparse.ArgumentTypeError(str(bad(flag, t, f"not a valid {item.__name__}"))) from None
        return tuple(out)

    return parse


def converter(tp: Any, flag: str) -> Callable[[str], Any]:
    """str -> value for a field type (the argparse ``type=``)."""
    tp, _ = _unwrap_optional(tp)
    if typing.get_origin(tp) is tuple:
        return _list_parser(flag, typing.get_args(tp)[0])
    if tp in (int, float, str):
        return tp
    raise TypeError(f"{flag}: no command-line form for type {tp!r}")


def add_fields(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: Iterable[str] = (),
    suppress_defaults: bool = False,
    help_prefix: str = "",
) -> list[str]:
    """Add one flag per command-line field of ``cls``; returns the field names added.

    ``suppress_defaults``: a flag that is not given leaves no attribute on the namespace (for
    settings only some configs accept, such as a method's own parameters)."""
    hints, added, skip = field_types(cls), [], set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", True) or f.name in {a.dest for a in parser._actions}:
            continue
        flag, tp = flag_of(f.name, f), hints[f.name]
        default = argparse.SUPPRESS if suppress_defaults else f.default
        text = help_prefix + (f.metadata.get("help") or "")
        if f.metadata.get("known"):
            text += f"; one of: {', '.join(f.metadata['known']())}"
        if not suppress_defaults and f.default not in (None, "", (), dataclasses.MISSING):
            shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            text += f" (default: {shown})"
        if _unwrap_optional(tp)[0] is bool:
            parser.add_argument(
                flag, dest=f.name, default=default, help=text, action=argparse.BooleanOptionalAction
            )
        else:
            parser.add_argument(
                flag,
                dest=f.name,
                default=default,
                help=text,
                metavar=f.metadata.get("metavar"),
                type=converter(tp, flag),
            )
        added.append(f.name)
    return added


def fields_from(ns: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values of ``cls``'s fields present on a parsed namespace."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(ns).items() if k in names}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors raise :class:`ConfigError` (one line, no usage dump) instead of
    exiting, so that only ``main`` decides about exit codes; ``--help`` still prints and exits 0."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        # "argument --accs: invalid --accs 'x': ..." -> "invalid --accs 'x': ..."
        raise ConfigError(re.sub(r"^argument [^:]+: (?=invalid --)", "", message))
