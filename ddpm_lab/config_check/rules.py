"""The building blocks of the config tables: what one key allows (a Rule) and what a config
section allows (a Section of keys, a Group dispatched on `_target_`, a Named dict of groups).

Every check raises a UserError whose message names the full key and what is allowed, e.g.
`optim.lr='abc' must be a positive number`. Values are plain Python (see `plain` in
`ddpm_lab.config_check`): MISSING marks a `???`, UNRESOLVED an interpolation that cannot be
resolved yet (it is left to the run).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ddpm_lab.errors import UserError, choice_error


class _Marker:
    """A value that is not there yet (kept as itself by copy.deepcopy)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __deepcopy__(self, memo: dict) -> _Marker:
        return self


MISSING, UNRESOLVED = _Marker("???"), _Marker("<unresolved>")
HYDRA_KEYS = frozenset({"_target_", "_recursive_", "_convert_", "_partial_", "_args_"})


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Rule:
    """One value: `is_type` and `in_range` must hold (None passes when `null`). `range_msg`, a
    format string with {key} {value} {float} {desc}, replaces the message for an out-of-range value."""

    desc: str
    is_type: Callable[[Any], bool]
    in_range: Callable[[Any], bool] = lambda v: True
    null: bool = False
    range_msg: str | None = None

    @property
    def full_desc(self) -> str:
        return f"{self.desc} or null" if self.null else self.desc

    def check(self, key: str, value: Any) -> None:
        if value is None and self.null:
            return
        if value is not None and self.is_type(value):
            if self.in_range(value):
                return
            if self.range_msg:
                shown = float(value) if is_number(value) else value
                raise UserError(self.range_msg.format(key=key, value=repr(value), float=repr(shown),
                                                      desc=self.full_desc))
        raise UserError(f"{key}={value!r} must be {self.full_desc}")


def _bounds(lo, hi, lo_open: bool, hi_open: bool) -> tuple[str, Callable[[Any], bool]]:
    """(' >= 1' / ' in [0, 1)' ..., the predicate) for optional bounds."""
    def ok(v) -> bool:
        return ((lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}", ok
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}", ok
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}", ok
    return "", ok


def integer(lo: int | None = None, hi: int | None = None, null: bool = False, **kw) -> Rule:
    """An int (not a bool, not a float such as 3.0) in [lo, hi]."""
    text, ok = _bounds(lo, hi, False, False)
    return Rule(f"an integer{text}", is_int, ok, null, **kw)


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, null: bool = False, **kw) -> Rule:
    """An int or a finite float in the interval; (0, inf) reads 'a positive number'."""
    text, ok = _bounds(lo, hi, lo_open, hi_open)
    desc = "a positive number" if (lo == 0 and lo_open and hi is None) else f"a number{text}"
    return Rule(desc, is_number, ok, null, **kw)


def boolean(null: bool = False) -> Rule:
    return Rule("true or false", lambda v: isinstance(v, bool), null=null)


def string(null: bool = False, desc: str = "a non-empty string") -> Rule:
    return Rule(desc, lambda v: isinstance(v, str) and v.strip() != "", null=null)


def custom(desc: str, ok: Callable[[Any], bool], null: bool = False) -> Rule:
    return Rule(desc, ok, null=null)


def names(module: str, attr: str) -> Callable[[], tuple]:
    """The choices `module.attr` (a tuple or dict of names), imported on first use: the tables
    name the code's own constants without importing it up front."""
    def get() -> tuple:
        import importlib
        return tuple(getattr(importlib.import_module(module), attr))
    return get


SEED = integer(0, 2**32 - 1)
PROBABILITY = number(0, 1)
POSITIVE = number(0, lo_open=True)


@dataclass(frozen=True)
class Choice:
    """One of `choices` (a tuple, or a function giving it: computed on first use); `also` accepts
    more values (the pattern that a shown choice such as 'cuda:<index>' stands for)."""

    choices: Sequence | Callable[[], Sequence]
    null: bool = False
    also: Callable[[Any], bool] | None = None

    def check(self, key: str, value: Any) -> None:
        if value is None and self.null or (self.also is not None and self.also(value)):
            return
        choices = tuple(self.choices() if callable(self.choices) else self.choices)
        if not any(type(value) is type(c) and value == c for c in choices):
            raise choice_error(key, value, dict.fromkeys(str(c) for c in choices))   # 32 and '32' once


@dataclass(frozen=True)
class ListOf:
    """A list whose items each pass `item` (named key[i], or key when not `index`)."""

    item: Any
    min_len: int = 0
    length: int | None = None
    null: bool = False
    index: bool = True

    def check(self, key: str, value: Any) -> None:
        if value is None and self.null:
            return
        size = (f"a list of {self.length} items" if self.length is not None
                else "a non-empty list" if self.min_len else "a list")
        if (not isinstance(value, list) or len(value) < self.min_len
                or (self.length is not None and len(value) != self.length)):
            raise UserError(f"{key}={value!r} must be {size}{' or null' if self.null else ''}")
        for i, v in enumerate(value):
            check_value(self.item, f"{key}[{i}]" if self.index else key, v)


@dataclass(frozen=True)
class AnyOf:
    """Passes when one of `options` passes; else one message with `desc`."""

    options: tuple
    desc: str

    def check(self, key: str, value: Any) -> None:
        for option in self.options:
            try:
                check_value(option, key, value)
                return
            except UserError:
                continue
        raise UserError(f"{key}={value!r} must be {self.desc}")


@dataclass(frozen=True)
class Section:
    """A dict of known keys. `closed`: other keys are errors. `variant`: (key, {value: extra
    rules}) adds the rules of the chosen variant (schedule.name=cosine takes s and max_beta)."""

    rules: dict
    closed: bool = True
    null: bool = False
    variant: tuple[str, dict] | None = None
    name: str = ""      # how messages call it (default: its key)

    def allowed(self, value: dict) -> dict:
        rules = dict(self.rules)
        if self.variant is not None:
            rules.update(self.variant[1].get(value.get(self.variant[0]), {}))
        return rules

    def check(self, key: str, value: Any, extra_keys: frozenset = frozenset(), where: str = "") -> None:
        if value is None and self.null:
            return
        if not isinstance(value, dict):
            raise UserError(f"{key}={value!r} must be a group of keys ({', '.join(self.rules)})")
        rules = self.allowed(value)
        for k, v in value.items():
            sub = f"{key}.{k}" if key else str(k)
            if k in rules:
                check_value(rules[k], sub, v)
            elif v is MISSING:
                check_value(None, sub, v)
            elif self.closed and k not in HYDRA_KEYS and k not in extra_keys:
                known = sorted(set(rules) | set(extra_keys))
                raise UserError(f"{sub} is unknown; {where or self.name or key} takes: {', '.join(known)}")


def signature_keys(target: str, key: str) -> tuple[frozenset, bool]:
    """(named parameters of `target`, whether it takes **kwargs)."""
    try:
        from hydra._internal.utils import _locate as get_object  # hydra.utils.get_object, unlogged
    except ImportError:  # pragma: no cover - a later Hydra
        from hydra.utils import get_object
    try:
        obj = get_object(target)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's target
        cause = err.__cause__ or err
        raise UserError(f"{key}._target_={target!r} cannot be imported ({type(cause).__name__}: "
                        f"{str(cause).strip().splitlines()[0] if str(cause).strip() else '?'})") from None
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return frozenset(), True
    named = frozenset(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


@dataclass(frozen=True)
class Group:
    """A `_target_` config: the Section for a known target (its keys checked; the target's other
    named parameters allowed unchecked); any other target: its keys against its signature."""

    targets: dict = field(default_factory=dict)
    null: bool = False

    def check(self, key: str, value: Any) -> None:
        if value is None and self.null:
            return
        if not isinstance(value, dict):
            raise UserError(f"{key}={value!r} must be a group of keys with a _target_")
        target = value.get("_target_")
        if target in (None, MISSING, UNRESOLVED) or not isinstance(target, str):
            raise UserError(f"{key}._target_ must name the class or function to build (e.g. a.b.Class)")
        section = self.targets.get(target)
        named, var_kw = signature_keys(target, key)
        if section is None:
            section = Section({}, closed=not var_kw)
        check_value(section, key, value, extra_keys=named, where=f"{key} ({target})")


@dataclass(frozen=True)
class Named:
    """A dict of named entries, each checked as `entry` (callbacks.<name>, logger.<name>);
    null entries (removed ones) are skipped."""

    entry: Any

    def check(self, key: str, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise UserError(f"{key}={value!r} must be a group of named entries")
        for name, v in value.items():
            if v is not None:
                check_value(self.entry, f"{key}.{name}", v)


def check_value(spec: Any, key: str, value: Any, **kw) -> None:
    """Check `value` against any of the specs above; MISSING is an error, UNRESOLVED is skipped."""
    if value is MISSING:
        raise UserError(f"Missing mandatory value: {key} (give {key}=...)")
    if value is UNRESOLVED or spec is None:
        return
    spec.check(key, value, **kw)


# what a checkpoint's samples (ddpm-sample, ddpm-eval) or a task (ddpm-edit) are conditioned on
LABEL = AnyOf((custom("", lambda v: False, null=True), integer(0), ListOf(integer(0), min_len=1)),
              "a class index >= 0, a list of them, or null")
PROMPT = AnyOf((custom("", lambda v: False, null=True), string(desc="a string"),
                ListOf(custom("a string", lambda v: isinstance(v, str)), min_len=1)),
               "a prompt, a list of prompts, or null")
