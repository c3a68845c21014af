"""Settings declared once: a field's type, default, choices, bounds, help and resume rule in one place.

`QuantizerConfig`, `ModelConfig` and `TrainConfig` are frozen dataclasses made with `@settings`; they
compose (a TrainConfig holds a ModelConfig, which holds a QuantizerConfig). From those declarations
alone come:

* validation, whenever a config is built (from code, flags or a file): type, choices and range; the
  error names the setting, what was expected and what was found (`SettingsError`, a ValueError);
* flat names: every setting has one name, unique across the levels, so `ModelConfig(num_codes=16)`
  routes to its quantizer, a `--config` file may be flat or nested, and the command line is flat;
* the command line of every program (`add_settings`, `settings_from_args`, `parse_settings`): one
  flag per setting with its help and default, `--config FILE` (JSON or TOML, flat or nested names;
  flags override it), and one line naming the setting for a bad value (`CommandLineParser`);
* a JSON form (`to_dict` / `from_dict`) for config.json and checkpoints;
* a resume rule per setting (`MATCH`, `FREE`, `CHANGES`), which the trainer applies on `--resume`.

A config remembers which settings it was given (`given`); everything else is a default or follows
another setting (a preset, say). `replace(**changes)` rebuilds from the given settings plus the
changes, so settings that follow a changed one follow it again.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

# Resume rules: what `--resume` does when a setting differs from the checkpoint's.
MATCH = "match"  # the run's math or data: refused, naming the setting, the old and the new value
FREE = "free"  # where and how the run reports (logging, checkpoints, device): taken silently
CHANGES = "changes"  # how long or how the run goes on from here: taken, announced and recorded
RESUME_RULES = (MATCH, FREE, CHANGES)


class SettingsError(ValueError):
    """An invalid setting: names it, the value expected and the value found."""

    def __init__(self, name: str, expected: str, found: object, *, found_text: str | None = None):
        self.name, self.expected, self.found = name, expected, found
        super().__init__(f"setting '{name}': expected {expected}, found {found_text or repr(found)}")


def setting(default: object = None, help: str = "", *, choices: tuple | None = None,
            at_least: float | None = None, above: float | None = None, below: float | None = None,
            at_most: float | None = None, resume: str = MATCH, flag: bool = True, metavar: str | None = None,
            const: object = None):
    """Declare one setting. Bounds apply to numbers and to each item of a tuple; `choices` likewise.
    `flag=False`: not a command-line flag (set by the program that embeds the config); `const`: the
    value of the flag given without one (`--resume` = `--resume yes`). A setting whose annotation
    does not admit None but whose default is None is required (`--meta CSV`, from a flag or a file)."""
    if resume not in RESUME_RULES:
        raise ValueError(f"resume rule: expected one of {RESUME_RULES}, found {resume!r}")
    metadata = {"help": help, "choices": choices, "at_least": at_least, "above": above, "below": below,
                "at_most": at_most, "resume": resume, "flag": flag, "metavar": metavar, "const": const}
    if isinstance(default, (list, dict, set)):
        raise TypeError("setting defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=metadata)


def nested(cls: type, help: str, **given: object):
    """A sub-config field; `given` overrides the sub-config's own defaults for this use of it."""
    return dataclasses.field(default_factory=functools.partial(cls, **given), metadata={"help": help, "nested": cls})


@dataclasses.dataclass(frozen=True)
class Declared:
    """One flat setting: its name, where it lives (`path` of nested fields) and its declaration."""

    name: str
    path: tuple[str, ...]
    field: dataclasses.Field
    kind: object  # the resolved annotation

    @property
    def meta(self) -> Mapping[str, object]:
        return self.field.metadata

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# ------------------------------------------------------------------------------ the decorator
def settings(cls: type) -> type:
    """Make `cls` a frozen, keyword-only dataclass of settings (see the module docstring). A class
    without its own `__post_init__` validates its fields; one with it calls `validate_fields()` first."""
    if "__post_init__" not in cls.__dict__:
        cls.__post_init__ = _validate_fields
    cls = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
    dataclass_init = cls.__init__

    @functools.wraps(dataclass_init)
    def __init__(self, **values: object) -> None:
        routed = _route(type(self), values)
        object.__setattr__(self, "_given", frozenset(routed))
        dataclass_init(self, **routed)

    cls.__init__ = __init__
    cls.given = property(lambda self: self._given, doc="names of the direct fields this config was given")
    cls.replace = _replace
    cls.to_dict = _to_dict
    cls.from_dict = classmethod(_from_dict)
    cls.flat = _flat
    cls.validate_fields = _validate_fields
    return cls


def declared(cls: type) -> dict[str, Declared]:
    """Every setting of `cls` and of its sub-configs, by flat name (which is unique)."""
    return dict(_declared(cls))


@functools.cache
def _declared(cls: type) -> tuple[tuple[str, Declared], ...]:
    hints = typing.get_type_hints(cls)
    found: dict[str, Declared] = {}
    for f in dataclasses.fields(cls):
        sub = f.metadata.get("nested")
        items = ([(d.name, dataclasses.replace(d, path=(f.name, *d.path))) for d in declared(sub).values()]
                 if sub is not None else [(f.name, Declared(f.name, (f.name,), f, hints[f.name]))])
        for name, decl in items:
            if name in found:
                raise TypeError(f"{cls.__name__}: setting {name!r} is declared twice "
                                f"({'.'.join(found[name].path)} and {'.'.join(decl.path)})")
            found[name] = decl
    return tuple(found.items())


def _route(cls: type, values: Mapping[str, object]) -> dict[str, object]:
    """Direct fields as given; flat names of sub-config settings into that sub-config."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    direct, deeper = {}, {}
    for name, value in values.items():
        if name in fields:
            direct[name] = value
            continue
        decl = declared(cls).get(name)
        if decl is None:
            raise SettingsError(name, f"a setting of {cls.__name__} (see --help)", name, found_text="an unknown name")
        deeper.setdefault(decl.path[0], {})[name] = value
    for name, field_ in fields.items():
        sub_cls = field_.metadata.get("nested")
        value = direct.get(name)
        if sub_cls is None or (value is None and name not in deeper):
            continue
        if value is None or isinstance(value, Mapping):  # this field's defaults, then the values given
            given = {**flatten(sub_cls, value or {}, name), **deeper.get(name, {})}
            direct[name] = field_.default_factory().replace(**given)
        elif isinstance(value, sub_cls):
            direct[name] = value.replace(**deeper[name]) if name in deeper else value
        else:
            raise SettingsError(name, f"a {sub_cls.__name__}", value)
    return direct


def _replace(self, **changes: object):
    """A copy with `changes` (flat names); settings that follow a changed one follow it again."""
    values = {name: getattr(self, name) for name in self.given}
    for f in dataclasses.fields(self):  # sub-configs always carry their own given settings
        if f.metadata.get("nested") is not None:
            values[f.name] = getattr(self, f.name)
    return type(self)(**{**values, **changes})


def _to_dict(self) -> dict:
    """Nested JSON-able values (tuples as lists)."""
    out = {}
    for f in dataclasses.fields(self):
        value = getattr(self, f.name)
        out[f.name] = value.to_dict() if f.metadata.get("nested") else _jsonable(value)
    return out


def _from_dict(cls: type, values: Mapping[str, object], source: str = "config") -> object:
    """Build from a mapping with nested ({"model": {"quantizer": {...}}}) or flat names, or both."""
    return cls(**flatten(cls, values, source))


def _flat(self) -> dict[str, object]:
    """Every setting's value by flat name."""
    out = {}
    for f in dataclasses.fields(self):
        value = getattr(self, f.name)
        out.update(value.flat() if f.metadata.get("nested") else {f.name: value})
    return out


def flatten(cls: type, values: Mapping[str, object], source: str = "config") -> dict[str, object]:
    """Nested or flat names -> flat names; a name given twice or unknown is an error."""
    if not isinstance(values, Mapping):
        raise SettingsError(source, "a table of settings (name = value)", values, found_text=type(values).__name__)
    flat: dict[str, object] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in values.items():
        sub_cls = fields[name].metadata.get("nested") if name in fields else None
        if sub_cls is not None and isinstance(value, Mapping):
            items = flatten(sub_cls, value, f"{source}.{name}").items()
        elif name in declared(cls) or sub_cls is not None:
            items = [(name, value)]
        else:
            raise SettingsError(f"{source}.{name}" if source != "config" else name,
                                f"a setting of {cls.__name__} (see --help)", name, found_text="an unknown name")
        for key, item in items:
            if key in flat:
                raise SettingsError(key, "one value", item, found_text="the setting given twice (flat and nested)")
            flat[key] = item
    return flat


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


# ------------------------------------------------------------------------------- validation
def _validate_fields(self) -> None:
    """Check and normalise every direct field of `self` against its declaration (types, choices,
    bounds). Called first thing in each config's __post_init__."""
    hints = typing.get_type_hints(type(self))
    for f in dataclasses.fields(self):
        if f.metadata.get("nested") is not None:
            continue
        value = _check(f.name, getattr(self, f.name), hints[f.name], f.metadata)
        object.__setattr__(self, f.name, value)


def _check(name: str, value: object, kind: object, meta: Mapping[str, object]) -> object:
    optional, base, item = _kind(kind)
    if value is None:
        if optional:
            return None
        raise SettingsError(name, _describe(base, item, meta), None, found_text="no value (it is required)")
    if base is tuple:
        if isinstance(value, str) or not isinstance(value, (tuple, list)):
            raise SettingsError(name, _describe(base, item, meta), value)
        return tuple(_check_scalar(name, v, item, meta, whole=value) for v in value)
    return _check_scalar(name, value, base, meta)


def _check_scalar(name: str, value: object, kind: type, meta: Mapping[str, object], whole: object = None) -> object:
    expected = _describe(kind, None, meta) if whole is None else _describe(tuple, kind, meta)
    found = value if whole is None else whole
    if kind is bool:
        if not isinstance(value, bool):
            raise SettingsError(name, expected, found)
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(name, expected, found)
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SettingsError(name, expected, found)
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise SettingsError(name, expected, found)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise SettingsError(name, expected, found)
    if kind in (int, float) and not _in_bounds(value, meta):
        raise SettingsError(name, expected, found)
    return value


def _in_bounds(value: float, meta: Mapping[str, object]) -> bool:
    checks = (("at_least", lambda b: value >= b), ("above", lambda b: value > b),
              ("below", lambda b: value < b), ("at_most", lambda b: value <= b))
    return all(meta.get(key) is None or ok(meta[key]) for key, ok in checks)


def _kind(kind: object) -> tuple[bool, type, type | None]:
    """(optional, base type, tuple item type) of an annotation such as `tuple[int, ...] | None`."""
    optional = False
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional, kind = True, args[0]
    if typing.get_origin(kind) is tuple:
        return optional, tuple, typing.get_args(kind)[0]
    return optional, kind, None


def _describe(kind: type, item: type | None, meta: Mapping[str, object]) -> str:
    """What a valid value looks like, in words: 'an integer >= 1', 'one of ('a', 'b')', ..."""
    if kind is tuple:
        return f"a comma-separated list, each {_describe(item, None, meta)}"
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[kind]
    if meta.get("choices") is not None:
        return f"one of {', '.join(map(str, meta['choices']))}"
    bounds = [f"{op} {meta[key]}" for key, op in (("at_least", ">="), ("above", ">"), ("below", "<"),
                                                  ("at_most", "<="))
              if meta.get(key) is not None]
    return words + (" " + " and ".join(bounds) if bounds else "")


# -------------------------------------------------------------------------- command line
class ConfigFileError(ValueError):
    """A `--config` file that cannot be read as settings, or that gave a bad value (the message names the
    file, then the setting)."""


class CommandLineParser(argparse.ArgumentParser):
    """An argument parser whose user errors are one line, `PROG: error: MESSAGE`, and exit status 2:
    the message names the flag or the setting and `--help` lists them all, so argparse's usage block
    is left out. The parsers of subcommands are of this class too (argparse makes them so)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_settings(parser: argparse.ArgumentParser, cls: type) -> None:
    """`--config FILE` and one flag per setting of `cls` (`add_flags`): what every program takes."""
    parser.add_argument("--config", metavar="FILE", help="JSON or TOML file of settings, flat or nested names "
                        "(flags override it)")
    add_flags(parser, cls)


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per setting of `cls` (flat names), help and default from the declarations. Only flags
    actually given reach the parsed namespace (`argparse.SUPPRESS`), so they can override a file.
    A value that is not even of the setting's type is refused by argparse in the settings' words."""
    shown = _shown_defaults(cls)
    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}
    for decl in declared(cls).values():
        meta = decl.meta
        if not meta.get("flag", True):
            continue
        owner = decl.path[:-1]
        if owner not in groups:
            groups[owner] = parser.add_argument_group(_group_title(cls, owner))
        group = groups[owner]
        optional, base, item = _kind(decl.kind)
        default = "required" if shown[decl.name] is None and not optional else f"default: {_show(shown[decl.name])}"
        kwargs = {"dest": decl.name, "default": argparse.SUPPRESS,
                  "help": f"{meta['help']} ({default})".replace("%", "%%")}
        if base is bool:
            group.add_argument(decl.flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kwargs["type"] = _flag_parser(decl, base, item, optional)
        if meta.get("const") is not None:
            kwargs.update(nargs="?", const=meta["const"])
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        elif meta.get("choices") is not None:
            kwargs["metavar"] = "{" + ",".join(map(str, meta["choices"])) + "}" + (",..." if base is tuple else "")
        else:
            kwargs["metavar"] = "A,B,..." if base is tuple else _METAVARS[base]
        group.add_argument(decl.flag, **kwargs)


_METAVARS = {int: "N", float: "X", str: "TEXT"}


def deprecated_flag(parser: argparse.ArgumentParser, flag: str, dest: str, value: object, instead: str) -> None:
    """An old flag kept working: it sets the setting `dest` to `value` and warns, in one line on stderr,
    that `instead` is its name now."""

    class Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"{parser.prog}: warning: {option_string} is deprecated; use {instead}", file=sys.stderr)
            setattr(namespace, self.dest, value)

    parser.add_argument(flag, dest=dest, nargs=0, action=Deprecated, default=argparse.SUPPRESS,
                        help=f"deprecated: {instead}")


def progress_setting() -> dataclasses.Field:
    """The progress setting of every program that shows a progress bar: `--progress` / `--no-progress`."""
    return setting(True, "show a progress bar", resume=FREE)


def _shown_defaults(cls: type) -> dict[str, object]:
    """The defaults `--help` shows, by flat name: those of `cls()` (which follow a preset, say), or the
    declared ones when `cls` has a required setting and cannot be built without it."""
    try:
        return cls().flat()
    except SettingsError:
        return {name: decl.field.default for name, decl in declared(cls).items()}


def _group_title(cls: type, path: tuple[str, ...]) -> str:
    """'settings of TrainConfig', 'settings of TrainConfig.model (ModelConfig)', ..."""
    owner = cls
    for name in path:
        owner = {f.name: f for f in dataclasses.fields(owner)}[name].metadata["nested"]
    where = ".".join((cls.__name__, *path))
    return f"{where} settings" if not path else f"{where} settings ({owner.__name__}: {_field_help(cls, path)})"


def _field_help(cls: type, path: tuple[str, ...]) -> str:
    for name in path[:-1]:
        cls = {f.name: f for f in dataclasses.fields(cls)}[name].metadata["nested"]
    return {f.name: f for f in dataclasses.fields(cls)}[path[-1]].metadata["help"]


def _flag_parser(decl: Declared, kind: type, item: type | None, optional: bool) -> Callable[[str], object]:
    """Text -> value of the setting's type (a comma-separated list for tuples; `none` for optional
    settings); choices and bounds are checked when the settings are built."""
    expected = _describe(kind, item, decl.meta)

    def parse(text: str) -> object:
        if optional and text.lower() == "none":
            return None
        try:
            if kind is tuple:
                return tuple(item(part.strip()) for part in text.split(",") if part.strip())
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(str(SettingsError(decl.name, expected, text))) from None

    return parse


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def read_config_file(path: str | Path, cls: type) -> dict[str, object]:
    """The settings of a JSON or TOML file (by its suffix: `.toml`, else JSON), by flat name; names
    that `cls` does not declare are refused here, values when the settings are built."""
    file = Path(path)
    try:
        text = file.read_text()
        values = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigFileError(f"--config {path}: cannot read settings ({exc})") from None
    try:
        return flatten(cls, values)
    except SettingsError as exc:
        raise ConfigFileError(f"--config {path}: {exc}") from None


def settings_from_args(cls: type, args: argparse.Namespace | Mapping[str, object]) -> object:
    """The settings of a parsed command line: the declared defaults < the `--config` file < the flags
    given (`add_flags` passes only those). Raises SettingsError naming the setting, or ConfigFileError
    naming the file too when the bad value came from it."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    path = values.get("config")
    file_values = read_config_file(path, cls) if path else {}
    given = {name: values[name] for name in declared(cls) if name in values}
    try:
        return cls(**{**file_values, **given})
    except SettingsError as exc:
        if exc.name in file_values and exc.name not in given:
            raise ConfigFileError(f"--config {path}: {exc}") from None
        raise


def parse_settings(parser: argparse.ArgumentParser, cls: type, argv: Sequence[str] | None = None,
                   ) -> tuple[object, argparse.Namespace]:
    """(the settings of `cls`, the parsed namespace, for the arguments that are not settings) from
    `argv` (default: the program's arguments). A bad setting or `--config` file exits with status 2
    and one line naming it (`parser.error`)."""
    args = parser.parse_args(argv)
    try:
        return settings_from_args(cls, args), args
    except (SettingsError, ConfigFileError) as exc:
        parser.error(str(exc))


def iter_settings(config: object) -> Iterator[tuple[Declared, object]]:
    """(declaration, value) of every setting of a config instance."""
    values = config.flat()
    for name, decl in declared(type(config)).items():
        yield decl, values[name]
