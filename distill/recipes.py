"""Recipe files: finding them by name or path, reading them (with ``base:`` inheritance) and
``--set section.key=value`` overrides; :mod:`distill.config` turns the result into a checked
:class:`~distill.config.Config`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .config_types import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _yaml_error(err: yaml.YAMLError) -> str:
    """``line L, column C: problem`` of a YAML error (1-based, as editors count)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` to ``(["train", "lr"], 1e-4)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML "
                          f"({_yaml_error(err)})") from None
    return key.strip().split("."), value


def _copy_sections(data: dict) -> dict:
    """A recipe mapping with each section copied, so changing a key leaves ``data`` as it was."""
    return {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each ``section.key=value`` in a nested dict (copied); unknown keys fail later."""
    data = _copy_sections(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return data


def resolve_recipe(name_or_path: str) -> Path:
    """A YAML path, or a recipe name from ``distill/configs`` (``"smoke_phase1"``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    packaged = CONFIG_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if packaged.is_file():
        return packaged
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"--config {name_or_path}: no such file and no packaged recipe of that "
                      f"name; packaged recipes: {', '.join(names)}")


def read_recipe(path: Path) -> dict:
    """The mapping in a recipe file; malformed YAML names the file, line and column."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML at {_yaml_error(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got "
                          f"{type(data).__name__}")
    return data


def merge_recipes(base: dict, child: dict) -> dict:
    """``child`` over ``base``: sections merged key by key (the child's value wins), any other
    top-level value replaced. Neither input is changed."""
    merged = _copy_sections(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def read_recipe_with_base(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A recipe with its ``base:`` chain resolved: ``base: NAME`` (a packaged recipe, or a path
    relative to this file's folder) supplies every key this file does not set, section by
    section, so a variant recipe holds only what it changes."""
    path = path.resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise ConfigError(f"{path}: its base chain loops ({chain})")
    data = read_recipe(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must be a recipe name or path, got {base!r}")
    local = path.parent / base
    try:
        base_path = local if local.is_file() else resolve_recipe(base)
    except ConfigError as err:
        raise ConfigError(f"{path}: base: {err}") from None
    return merge_recipes(read_recipe_with_base(base_path, (*_seen, path)), data)
