"""Type checking of recipe values against the config dataclasses' annotations.

Every value of a recipe or ``--set`` override is converted to its field's annotation (ints pass
as floats, lists as tuples, ``X | None`` unions, ``list[...]`` and ``dict[..., ...]``), or raises
:class:`ConfigError` naming the dotted key; unknown keys are rejected with the valid ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import fields
from typing import Any

from effvit_sam.errors import UserError


class ConfigError(UserError):
    """A recipe or ``--set`` override that does not describe a valid run."""


def check_type(value: Any, annotation: Any, key: str) -> Any:
    """``value`` converted to ``annotation`` (ints pass as floats, lists as tuples) or raise."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return check_type(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_type, item = typing.get_args(annotation)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {check_type(k, key_type, f"{key} key"): check_type(v, item, f"{key}.{k}")
                for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(check_type(v, a, key) for v, a in zip(value, args, strict=True))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; it is plainly a number
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true/false, got {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if not isinstance(value, annotation):
        raise ConfigError(f"{key} must be {annotation.__name__}, got {type(value).__name__} "
                         f"{value!r}")
    return value


def build_dataclass(cls: type, data: dict, prefix: str) -> Any:
    """An instance of dataclass ``cls`` from ``data``; nested dataclasses recursively, every
    value type-checked, unknown keys rejected (``prefix``: the dotted path, for messages)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(f"unknown config keys {unknown} in {where}; valid: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_dataclass(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = check_type(value, hint, f"{prefix}{name}")
    return cls(**kwargs)
