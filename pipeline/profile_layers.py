"""A profile's layers: each read (YAML file or ``-O key=value``), merged with a record of which layer
set each key, and validation errors explained by that record, so every error names its source."""
from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.errors import InputError


class ProfileError(InputError):
    """A profile that cannot be used; the message names the source file and key."""


def parse_override(item: str) -> dict:
    """``train.epochs=3`` -> {"train": {"epochs": 3}}; values are parsed as YAML scalars."""
    if "=" not in item:
        raise ProfileError(f"-O {item}: expected key=value, e.g. -O train.epochs=3")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ProfileError(f"-O {item}: empty key")
    value = _override_value(raw)
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _override_value(raw: str) -> Any:
    """The value of ``-O key=raw`` read as YAML (numbers, booleans, lists); text that is not valid YAML,
    such as the glob ``*sonata*`` (an alias to YAML), is taken as the plain string it was typed as."""
    if raw == "":
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def read_yaml(path: Path, shown: str) -> dict:
    """The mapping a YAML profile layer holds (``shown``: how errors name the file)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{shown}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProfileError(f"{shown}: expected a mapping of keys at top level, got {type(data).__name__}")
    return data


def merge_layer(into: dict, layer: dict, sources: dict, source: str, prefix: tuple = ()) -> None:
    """Merge ``layer`` into ``into``, recording in ``sources`` which layer set each dotted key."""
    for key, value in layer.items():
        loc = prefix + (key,)
        # resources.<stage>.extra and similar free-form mappings merge too; lists replace.
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge_layer(into[key], value, sources, source, loc)
        else:
            into[key] = copy.deepcopy(value)
            _mark(sources, loc, value, source)


def _mark(sources: dict, loc: tuple, value: Any, source: str) -> None:
    sources[loc] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(sources, loc + (k,), v, source)


def explain(exc: ValidationError, sources: dict, default_source: str, schema: type[BaseModel]) -> str:
    """One line per validation error: the layer that set the key, the dotted key, what is wrong."""
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        source = default_source
        for n in range(len(loc), 0, -1):
            if loc[:n] in sources:
                source = sources[loc[:n]]
                break
        key = ".".join(loc) or "<profile>"
        if err["type"] == "extra_forbidden":
            parent = _model_at(schema, loc[:-1])
            valid = sorted(parent.model_fields) if parent else []
            msg = f"unknown key {loc[-1]!r}" + (f"; valid keys here: {valid}" if valid else "")
        else:
            got = err.get("input")
            text = err["msg"].removeprefix("Value error, ")
            msg = f"{text} (got {got!r})" if not isinstance(got, (dict, list)) and "got" not in text else text
        lines.append(f"{source}: {key}: {msg}")
    return "invalid profile:\n  " + "\n  ".join(lines)


def _model_at(schema: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model of ``schema`` that owns the mapping at ``loc`` (to list its valid keys); a field that
    maps names to models (``resources: dict[str, Resources]``) is stepped over with its name."""
    model: type[BaseModel] = schema
    i = 0
    while i < len(loc):
        field = model.model_fields.get(loc[i])
        ann = field.annotation if field else None
        if typing.get_origin(ann) is dict:
            value = typing.get_args(ann)[1]
            if i + 1 >= len(loc) or not (isinstance(value, type) and issubclass(value, BaseModel)):
                return None
            model, i = value, i + 2
            continue
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model, i = ann, i + 1
    return model
