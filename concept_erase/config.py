"""One base for every settings dataclass (SEMU, each peer method, evaluation, attacks).

A setting is declared once, as a dataclass field with its default, a comment saying why that
default, and a one-line help (``setting(default, "help")``). From that single declaration come:

- validation helpers with messages that name the field, the value seen and what is allowed;
- ``to_dict`` / ``from_dict`` (the adapter metadata and ``report.json`` record configs this way);
- ``with_overrides(**settings)``, which refuses names the config does not have;
- command-line flags (``add_arguments`` / ``values_from_args``): ``--learning-rate`` for ``learning_rate``,
  typed from the annotation, help from the field.

Nothing here imports torch, so the command line can describe settings cheaply.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Iterable, Sequence

from .errors import InvalidConfigError

__all__ = [
    "Config", "setting", "check_int", "check_number", "check_fraction", "check_choice", "check_patterns",
    "add_arguments", "values_from_args", "MIXED_PRECISIONS", "SAVE_PRECISIONS", "check_mixed_precision",
]


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
            choices: Sequence | None = None, append: bool = False, cli: bool = True, group: str | None = None) -> Any:
    """A dataclass field with command-line help. ``flag`` renames the flag (``--steps`` for
    ``num_inference_steps``), ``choices`` restricts it, ``append`` makes a list flag repeatable,
    ``cli=False`` keeps a setting off the command line, ``group`` names its section in ``--help``."""
    meta = {"help": help, "flag": flag, "choices": tuple(choices) if choices else None, "append": append, "cli": cli,
            "group": group}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Config:
    """Mixin for settings dataclasses: serialisation and overrides. Subclasses validate in
    ``__post_init__`` with the ``check_*`` helpers below."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict):
        """Build from a dict, ignoring keys this version does not know (older or newer files)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def setting_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def check_names(cls, names: Iterable[str], *, what: str = "") -> None:
        """Raise :class:`InvalidConfigError` naming any of ``names`` that is not a setting."""
        valid = cls.setting_names()
        unknown = sorted(set(names) - set(valid))
        if unknown:
            raise InvalidConfigError(
                f"{cls.__name__} has no setting {', '.join(map(repr, unknown))}{what}; "
                f"valid settings: {', '.join(valid)}."
            )

    def with_overrides(self, **overrides):
        """A validated copy with ``overrides`` applied; unknown names are refused."""
        self.check_names(overrides)
        return dataclasses.replace(self, **overrides)  # type: ignore[type-var]


# ---------------------------------------------------------------- validation (messages name the field)
def check_int(cfg, *names: str, minimum: int = 1, maximum: int | None = None) -> None:
    for name in names:
        value = getattr(cfg, name)
        ok = not isinstance(value, bool) and isinstance(value, int) and value >= minimum
        ok = ok and (maximum is None or value <= maximum)
        if not ok:
            if maximum is not None:
                what = f"an integer in [{minimum}, {maximum}]"
            else:
                what = "a positive integer" if minimum == 1 else "a non-negative integer" if minimum == 0 \
                    else f"an integer >= {minimum}"
            raise InvalidConfigError(f"`{name}` must be {what} but is {value!r}.")


def check_number(cfg, *names: str, positive: bool = True, allow_zero: bool = False,
                 optional: bool = False) -> None:
    """Finite numbers; ``positive`` (the default) requires > 0, or >= 0 with ``allow_zero``."""
    for name in names:
        value = getattr(cfg, name)
        if optional and value is None:
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and positive:
            ok = value >= 0 if allow_zero else value > 0
        if not ok:
            kind = ("non-negative " if allow_zero else "positive ") if positive else ""
            raise InvalidConfigError(f"`{name}` must be a finite {kind}number but is {value!r}.")


def check_fraction(cfg, *names: str, low_open: bool = True, high_open: bool = False) -> None:
    """Numbers in (0, 1] (or [0, 1], (0, 1), [0, 1) as asked)."""
    for name in names:
        value = getattr(cfg, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            ok = (0 < value if low_open else 0 <= value) and (value < 1 if high_open else value <= 1)
        if not ok:
            interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
            raise InvalidConfigError(f"`{name}` must be in {interval} but is {value!r}.")


def check_choice(cfg, name: str, choices: Iterable) -> None:
    choices = tuple(choices)
    value = getattr(cfg, name)
    if value not in choices:
        raise InvalidConfigError(f"`{name}` must be one of {', '.join(map(repr, choices))} but is {value!r}.")


def check_patterns(cfg, name: str = "target_modules", *, example: str = "'*attn2.to_k'") -> None:
    """A non-empty tuple of glob patterns (a list is converted in place)."""
    value = getattr(cfg, name)
    value = (value,) if isinstance(value, str) else tuple(value or ())
    if not value or not all(isinstance(p, str) and p for p in value):
        raise InvalidConfigError(f"`{name}` must hold at least one module name pattern, e.g. {example}; "
                                 f"got {getattr(cfg, name)!r}.")
    setattr(cfg, name, value)


# ---------------------------------------------------------------- precision
# The frozen base model's dtype, named as diffusers' training scripts (and accelerate) name it:
# "no" is float32. Trainable parameters are float32 whatever it is (concept_erase.methods.common).
MIXED_PRECISIONS = ("no", "fp16", "bf16")
# help of every command's --base-config (a single-file --base's configs)
BASE_CONFIG_HELP = ("a local diffusers pipeline directory or a hub id whose configs describe a single-file --base "
                    "(offline: a local one; default: diffusers infers them from the file)")
# The dtype the adapter file's tensors are written in.
SAVE_PRECISIONS = ("fp32", "fp16", "bf16")


def check_mixed_precision(value) -> str:
    """``value`` if it is one of :data:`MIXED_PRECISIONS`, else :class:`InvalidConfigError` naming it."""
    if value not in MIXED_PRECISIONS:
        raise InvalidConfigError(f"`mixed_precision` must be one of {', '.join(map(repr, MIXED_PRECISIONS))} but is "
                                 f"{value!r}.")
    return value


# ---------------------------------------------------------------- command-line flags from fields
def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _optional_of(tp):
    """``int | None`` -> ``int``; other types unchanged (and whether None was allowed)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return tp, False


class _NoneGiven:
    """What ``--flag none`` parses to, so that "set to None" differs from "not given"."""

    def __repr__(self) -> str:
        return "None"


_NONE = _NoneGiven()


def _scalar(tp, optional: bool):
    def parse(text: str):
        if optional and text.lower() == "none":
            return _NONE
        try:
            return tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {tp.__name__}{' or none' if optional else ''}, "
                                             f"got {text!r}") from None

    parse.__name__ = tp.__name__  # argparse names the type in its messages
    return parse


def _argument(field: dataclasses.Field, tp) -> tuple[tuple, dict]:
    tp, optional = _optional_of(tp)
    meta = field.metadata
    kwargs: dict = {"dest": field.name, "default": None, "help": meta.get("help") or None}
    if meta.get("choices"):
        kwargs["choices"] = meta["choices"]
    origin = typing.get_origin(tp)
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin in (list, tuple):
        item = (typing.get_args(tp) or (str,))[0]
        kwargs["type"] = _scalar(item if item in (int, float, str) else str, False)
        if meta.get("append"):
            kwargs["action"] = "append"
        else:
            kwargs["nargs"] = "+"
    else:
        kwargs["type"] = _scalar(tp if tp in (int, float, str) else str, optional)
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
        kwargs["required"] = True
    return (_flag(field),), kwargs


def add_arguments(parser, *config_classes: type) -> set[str]:
    """Add a flag for every command-line setting of ``config_classes`` (a name shared by several
    classes gets one flag, the first class's). Returns the destinations added."""
    added: set[str] = set()
    groups: dict = {}
    for cls in config_classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.metadata.get("cli", True) or f.name in added:
                continue
            args, kwargs = _argument(f, hints[f.name])
            name = f.metadata.get("group")
            if name and name not in groups:
                groups[name] = parser.add_argument_group(name)
            (groups[name] if name else parser).add_argument(*args, **kwargs)
            added.add(f.name)
    return added


def values_from_args(args: argparse.Namespace, config_class: type) -> dict:
    """The settings of ``config_class`` given on the command line (flags left out are not included)."""
    hints = typing.get_type_hints(config_class)
    out = {}
    for f in dataclasses.fields(config_class):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        tp, _ = _optional_of(hints[f.name])
        if value is _NONE:
            value = None
        elif typing.get_origin(tp) is tuple:
            value = tuple(value)
        out[f.name] = value
    return out
