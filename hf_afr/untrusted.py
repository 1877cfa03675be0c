"""Reading files of checkpoints, which are untrusted input: the one error, bounded JSON, checked fields.

Every reader of hf_afr (compact weights, masks sidecar, `pruner_config.json`, the model card's
metadata, the fields of `config.json` hf_afr reads) raises `CheckpointError`, whose one-line
message names the file and the field. JSON from a checkpoint is parsed by `parse_json` /
`read_json_file`: bounded in size and nesting depth, UTF-8 errors and duplicate keys named,
`NaN`/`Infinity` refused. Field checkers (`check_int`, `check_shape`) turn values into the
integers that size allocations, so that nothing is allocated from an unchecked number.
Imports nothing of hf_afr (every module may use it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from typing import Any

import numpy as np

MAX_JSON_BYTES = 16 * 2**20
"""Largest JSON text read from a checkpoint (configs, metadata): 16 MiB."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in that JSON."""
MAX_DIMS = 8
"""Most dimensions of a declared tensor shape."""
MAX_NUMEL = 2**34
"""Most elements of a declared tensor, before it is compared with the model."""

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, inconsistent or hostile.

    The message is one line: `<file>: <field>: <what is wrong and what to do>`.

    Args:
        path (`str` or `os.PathLike`): the file (or folder) at fault.
        field (`str`, *optional*): the field of that file, e.g. `metadata.sparse_tensors`.
        problem (`str`): what is wrong, and how to fix it.
    """

    def __init__(self, path: str | os.PathLike, field: str | None = None, problem: str = ""):
        self.path = os.fspath(path)
        self.field = field
        self.problem = " ".join(str(problem).split())
        where = self.path if field is None else f"{self.path}: `{field}`"
        super().__init__(f"{where}: {self.problem}" if self.problem else where)

    def __reduce__(self):
        return type(self), (self.path, self.field, self.problem)


def describe(value: Any, limit: int = 40) -> str:
    """A short `repr` of a value read from a file (for messages)."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge integer"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_depth(text: str) -> int:
    """The deepest nesting of arrays/objects in a JSON text (strings ignored), without parsing."""
    data = np.frombuffer(_STRING.sub("", text).encode("utf-8", "replace"), dtype=np.uint8)
    steps = np.isin(data, (ord("["), ord("{"))).astype(np.int64)
    steps -= np.isin(data, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max()) if len(steps) else 0


def decode_utf8(data: bytes, path: str | os.PathLike, field: str | None = None) -> str:
    """`data` decoded as UTF-8, or a `CheckpointError` naming the first invalid byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(
            path, field, f"is not UTF-8 text (invalid byte at offset {err.start})."
        ) from None


def parse_json(
    text: str | bytes,
    path: str | os.PathLike,
    field: str | None = None,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse JSON from a checkpoint, bounded in size and depth.

    Raises:
        CheckpointError: text too large or too deep, not UTF-8, not JSON, a duplicate key, or
            `NaN` / `Infinity`.
    """
    if len(text) > max_bytes:
        raise CheckpointError(
            path, field, f"holds {len(text)} bytes of JSON, more than the {max_bytes} accepted."
        )
    if isinstance(text, bytes):
        text = decode_utf8(text, path, field)
    depth = json_depth(text)
    if depth > max_depth:
        raise CheckpointError(
            path, field, f"nests JSON {depth} levels deep; at most {max_depth} are accepted."
        )

    def no_constant(name: str) -> Any:
        raise CheckpointError(path, field, f"holds {name}; only finite numbers are accepted.")

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        data = dict(pairs)
        if len(data) != len(pairs):
            seen: set[str] = set()
            twice = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise CheckpointError(path, field, f"holds the key {twice!r} twice.")
        return data

    try:
        return json.loads(text, parse_constant=no_constant, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as err:
        raise CheckpointError(path, field, f"is not valid JSON ({err}).") from None
    except (ValueError, RecursionError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(path, field, f"is not valid JSON ({err}).") from None


def read_json_file(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The JSON object in a file of a checkpoint (read at most `max_bytes` + 1 bytes).

    Raises:
        CheckpointError: if the file is not a regular file holding one bounded JSON object.
    """
    if not os.path.isfile(path):
        raise CheckpointError(path, None, "is not a regular file.")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise CheckpointError(path, None, f"cannot be read ({err.strerror}).") from None
    value = parse_json(data, path, max_bytes=max_bytes)
    if not isinstance(value, dict):
        raise CheckpointError(path, None, f"must hold a JSON object, got {describe(value)}.")
    return value


def check_int(
    value: Any, path: str | os.PathLike, field: str, minimum: int = 0, maximum: int = MAX_NUMEL
) -> int:
    """`value` if it is an integer (not a bool, not a float) in `[minimum, maximum]`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CheckpointError(path, field, f"must be an integer, got {describe(value)}.")
    if not minimum <= value <= maximum:
        raise CheckpointError(
            path, field, f"must be in [{minimum}, {maximum}], got {describe(int(value))}."
        )
    return int(value)


def check_shape(
    value: Any, path: str | os.PathLike, field: str, max_numel: int = MAX_NUMEL
) -> tuple[int, ...]:
    """`value` as a tensor shape: a list of at most `MAX_DIMS` integers >= 0, `max_numel` in all."""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_DIMS:
        raise CheckpointError(
            path, field, f"must be a list of at most {MAX_DIMS} integers, got {describe(value)}."
        )
    shape = tuple(check_int(s, path, field, 0, max_numel) for s in value)
    if math.prod(shape) > max_numel:
        raise CheckpointError(
            path,
            field,
            f"declares {math.prod(shape)} elements, more than the {max_numel} accepted.",
        )
    return shape


def check_finite(value: Any, path: str | os.PathLike, field: str) -> float:
    """`value` if it is a finite number (not a bool)."""
    try:
        finite = not isinstance(value, bool) and math.isfinite(value)
    except (TypeError, OverflowError):
        finite = False
    if not finite:
        raise CheckpointError(path, field, f"must be a finite number, got {describe(value)}.")
    return value


def _json_type_fits(hint: Any, value: Any) -> bool:
    """Whether a JSON value has the type a field's annotation names (bool is not a number)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_json_type_fits(arg, value) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:  # list[str]; a single string is accepted too
        return isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
    if hint is type(None):
        return value is None
    if hint in (int, float):
        numbers = (int,) if hint is int else (int, float)
        return isinstance(value, numbers) and not isinstance(value, bool)
    return isinstance(value, hint) if hint in (str, bool) else True


def check_field_types(cls: type, data: dict[str, Any], path: str) -> None:
    """Raise a `CheckpointError` naming the first field of `data` (read from `path`) whose JSON
    type is not the one the dataclass `cls` annotates."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in data and not _json_type_fits(hints[f.name], data[f.name]):
            hint = hints[f.name]
            kind = getattr(hint, "__name__", None) or str(hint)
            raise CheckpointError(path, f.name, f"must be {kind}, got {describe(data[f.name])}.")
