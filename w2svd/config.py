"""Typed configs: dataclasses filled from YAML plus dotted ``key=value`` overrides, strictly checked."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the fix."""


# Value rules for ``check_values``: (predicate, what the value must be)
POSITIVE = (lambda v: v > 0, "> 0")
NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
AT_LEAST_ONE = (lambda v: v >= 1, ">= 1")
UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
NON_EMPTY = (lambda v: bool(str(v).strip()), "a non-empty string")


def check_values(obj: Any, where: str, **rules: tuple) -> None:
    """ConfigError naming the first field of ``obj`` that breaks its rule, e.g. ``rank=AT_LEAST_ONE``."""
    for name, (ok, what) in rules.items():
        value = getattr(obj, name)
        if not ok(value):
            raise ConfigError(f"{where}.{name}={value!r} must be {what}")


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader without anchors and aliases: configs never need them, and nested aliases can expand exponentially
    (a 'billion laughs' file of a few hundred bytes)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"YAML alias *{event.anchor} at line {event.start_mark.line + 1}: aliases and merge keys are not "
                "allowed in configs; write the values out"
            )
        return super().compose_node(parent, index)


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses aliases (ConfigError) and so runs in time linear in the text."""
    return yaml.load(text, Loader=_NoAliasLoader)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}={value!r} fits none of {[_type_name(a) for a in args]}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length, e.g. tuple[float, float]
            if len(value) != len(args):
                raise ConfigError(f"{where} must be a list of {len(args)} items, got {value!r}")
            return tuple(_coerce(v, arg, f"{where}[{i}]") for i, (v, arg) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:  # YAML reads 1e-4 without a dot as a string
                number = float(value)
            except (ValueError, OverflowError):  # not a number, or an integer too large for a float
                pass
            else:
                if math.isfinite(number):
                    return number
                raise ConfigError(f"{where} must be a finite number, got {value!r}")
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise a ConfigError naming the valid ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys need not be strings
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e
    check = getattr(obj, "validate", None)
    if check is not None:
        check()
    return obj


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. max_steps=100)")
        key, raw = item.split("=", 1)
        try:
            value = safe_yaml(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            problem = str(e).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem}); quote it") from e
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Read YAML at ``path`` (or start empty), apply overrides, and build ``cls``."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = safe_yaml(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    apply_overrides(data, overrides or [])
    return from_dict(cls, data, "config")
