"""Typed configuration from layered YAML: defaults, a preset or file, then ``--set`` overrides.

A schema is a tree of dataclasses. Every value is checked against its annotation; unknown keys, wrong
types and values a ``__post_init__`` rejects become one :class:`ConfigError` that names where the
value came from (file or ``--set``), its key path and the bad value.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError

T = TypeVar("T")


class FieldError(ValueError):
    """Raised by a settings dataclass's ``__post_init__`` to reject one field's value.

    The message names the field, the rule and the value: ``every must be >= 1, got 0``.
    """

    def __init__(self, field: str, rule: str, value: Any) -> None:
        super().__init__(f"{field} {rule}, got {value!r}")
        self.field = field
        self.rule = rule
        self.value = value


def check(ok: bool, field: str, value: Any, rule: str) -> None:
    """Raise :class:`FieldError` for ``field`` unless ``ok``: one rule, one field, its own value.

    Example:
        >>> check(3 >= 1, "every", 3, "must be >= 1")
        >>> check(0 >= 1, "every", 0, "must be >= 1")
        Traceback (most recent call last):
        ...
        facestream.pipeline.config.FieldError: every must be >= 1, got 0
    """
    if not ok:
        raise FieldError(field, rule, value)


def positive(obj: Any, *names: str) -> None:
    """Each named field of ``obj`` that is set must be > 0."""
    for name in names:
        value = getattr(obj, name)
        check(value is None or value > 0, name, value, "must be > 0")


def load_yaml(path: Any) -> dict[str, Any]:
    """Read a YAML mapping from a path (or package data); errors name the file and the line."""
    try:
        text = path.read_text() if hasattr(path, "read_text") else Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of keys to values", source=str(path))
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"flow.queue_size=4"`` -> ``(["flow", "queue_size"], 4)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set takes key.path=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return [part for part in key.strip().split(".")], value


class Layers:
    """Merges configuration layers and remembers which layer set each key path."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.origin: dict[str, str] = {}

    def add(self, data: dict[str, Any], source: str) -> None:
        self._merge(self.data, data, [], source)

    def set(self, path: list[str], value: Any, source: str) -> None:
        node = self.data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
        self._mark(path, value, source)

    def _merge(self, into: dict[str, Any], data: dict[str, Any], path: list[str], source: str) -> None:
        for key, value in data.items():
            key = str(key)
            here = path + [key]
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                self._merge(into[key], value, here, source)
            else:
                into[key] = value
                self._mark(here, value, source)

    def _mark(self, path: list[str], value: Any, source: str) -> None:
        self.origin[".".join(path)] = source
        if isinstance(value, dict):
            for k, v in value.items():
                self._mark(path + [str(k)], v, source)

    def source_of(self, key: str) -> str | None:
        while key:
            if key in self.origin:
                return self.origin[key]
            key = key.rpartition(".")[0]
        return None


def build(schema: type[T], layers: Layers) -> T:
    """Build and validate ``schema`` from merged layers."""
    return _build_dataclass(schema, layers.data, "", layers)


def _error(layers: Layers, key: str, message: str) -> ConfigError:
    return ConfigError(message, source=layers.source_of(key), key=key or None)


def _build_dataclass(cls: type[T], data: Any, prefix: str, layers: Layers) -> T:
    if not isinstance(data, dict):
        raise _error(layers, prefix, f"expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise _error(layers, path, f"unknown key '{key}' (known: {', '.join(sorted(fields))})")
        kwargs[key] = _coerce(hints[key], value, path, layers)
    try:
        return cls(**kwargs)
    except FieldError as exc:
        path = f"{prefix}.{exc.field}" if prefix else exc.field
        raise _error(layers, path, f"{exc.rule}, got {exc.value!r}") from None
    except ValueError as exc:
        raise _error(layers, prefix, str(exc)) from None


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(tp: Any, value: Any, path: str, layers: Layers) -> Any:
    origin = get_origin(tp)
    bad = _error(layers, path, f"expected {_describe(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value if value is not None else {}, path, layers)  # type: ignore[arg-type]
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _coerce(option, value, path, layers)
            except ConfigError:
                continue
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in get_args(tp)):
            return value
        raise bad
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = get_args(tp)
        return [_coerce(item, v, f"{path}[{i}]", layers) for i, v in enumerate(value)]
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]", layers) for i, v in enumerate(value))
        if len(value) != len(args):
            raise _error(layers, path, f"expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, f"{path}[{i}]", layers) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        kt, vt = get_args(tp)
        return {_coerce(kt, k, path, layers): _coerce(vt, v, f"{path}.{k}", layers) for k, v in value.items()}
    raise TypeError(f"unsupported annotation {tp!r} at {path}")


def to_dict(obj: Any) -> Any:
    """A schema instance as plain data (for reports)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj

