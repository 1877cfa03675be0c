"""Fuzzing the readers of checkpoint files: random corruptions of a real compact file, masks file
and pruner config either load correctly or raise `CheckpointError`, within a memory bound, writing
nothing (hypothesis, bounded: a few dozen examples per reader, each with a deadline)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tracemalloc
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save as save_numpy
from safetensors.torch import save as save_torch

from hf_afr import AFRPruner, CheckpointError, PrunerConfig
from hf_afr.checkpoint import codec, load_masks, read_compact_weights
from hf_afr.checkpoint.entries import model_tensors

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
_spec = importlib.util.spec_from_file_location("hostile", BENCHMARKS / "hostile_checkpoints.py")
hostile = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("hostile", hostile)
_spec.loader.exec_module(hostile)

PEAK_BYTES = 64 * 2**20
FUZZ = settings(
    max_examples=60,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
# A field of an entry and a new value: random JSON, or a valid value in the wrong place.
PARAMS = [f"vit.layers.{i}.attention.{n}_proj.weight" for i in (0, 1) for n in "qkvo"]
FIELD_VALUES = st.one_of(
    st.tuples(st.just("encoding"), st.sampled_from(list(codec.MASK_ENCODINGS.values())) | JSON),
    st.tuples(st.just("dtype"), st.sampled_from(list(codec.STORED_DTYPES)) | JSON),
    st.tuples(st.just("param"), st.sampled_from(PARAMS) | JSON),
    st.tuples(st.just("nnz"), st.integers(0, 9000) | JSON),
    st.tuples(st.just("shape"), st.lists(st.integers(0, 200), max_size=3) | JSON),
    st.tuples(st.just("crc32"), st.integers(0, 2**32 - 1) | st.none() | JSON),
)
# Byte-level damage: (relative position, new byte) flips, then an optional truncation.
FLIPS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4)
CUT = st.none() | st.floats(0, 1)


class Setup:
    def __init__(self, root: Path):
        self.bases = hostile.build_bases(root)
        self.model = AFRPruner.from_pretrained(self.bases["dense"]).model
        self.expected = model_tensors(self.model)
        self.largest = max(p.numel() for p in self.model.parameters())
        self.work = root / "work"
        self.work.mkdir()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    return Setup(tmp_path_factory.mktemp("fuzz"))


def _damage(data: bytes, flips, cut) -> bytes:
    data = bytearray(data)
    for where, byte in flips:
        data[int(where * len(data))] = byte
    return bytes(data[: int(cut * len(data))] if cut is not None else data)


def _read_bounded(setup: Setup, name: str, data: bytes, read):
    """Write `data` as `name` alone in a folder, read it; check the bound and that nothing
    was written. Returns what `read` returned, or None if it raised `CheckpointError`."""
    folder = setup.work / "case"
    folder.mkdir(exist_ok=True)
    for stale in folder.iterdir():
        stale.unlink()
    (folder / name).write_bytes(data)
    bounds = []
    real = codec._inflate

    def spy(payload, max_size, label):
        bounds.append(max_size)
        return real(payload, max_size, label)

    tracemalloc.start()
    try:
        with mock.patch.object(codec, "_inflate", spy):
            result = read(folder / name)
    except CheckpointError as err:
        assert "\n" not in str(err) and str(err).startswith(str(folder / name))
        result = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert os.listdir(folder) == [name]
    assert peak < PEAK_BYTES
    assert all(b <= setup.largest + setup.largest // 255 + 1 for b in bounds)
    return result


def _compact_parts(setup: Setup):
    with safe_open(str(setup.bases["compact"] / hostile.COMPACT), framework="pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def _check_compact(setup: Setup, path: Path):
    state, masks, entries = read_compact_weights(path, expected=setup.expected)
    for key, (param, shape) in setup.expected.items():
        if key in entries:
            assert tuple(state[key].shape) == shape and tuple(masks[param].shape) == shape
    return state


@FUZZ
@given(flips=FLIPS, cut=CUT)
def test_damaged_compact_bytes_load_or_raise(setup, flips, cut):
    data = (setup.bases["compact"] / hostile.COMPACT).read_bytes()
    _read_bounded(
        setup, hostile.COMPACT, _damage(data, flips, cut), lambda p: _check_compact(setup, p)
    )


@FUZZ
@given(entry=st.integers(0, 11), field_value=FIELD_VALUES)
def test_compact_metadata_fields_load_or_raise(setup, entry, field_value):
    field, value = field_value
    metadata, tensors = _compact_parts(setup)
    sparse = json.loads(metadata["sparse_tensors"])
    key = list(sparse)[entry]
    original, sparse[key][field] = sparse[key][field], value
    ints = isinstance(value, list) and all(type(v) is int and 0 <= v < 2**62 for v in value)
    if field == "shape" and ints:  # the stored shape agrees: only the model can tell
        tensors[key + ".afr_shape"] = torch.tensor(value, dtype=torch.int64)
    metadata["sparse_tensors"] = json.dumps(sparse)
    data = save_torch(tensors, metadata=metadata)
    state = _read_bounded(setup, hostile.COMPACT, data, lambda p: _check_compact(setup, p))
    if state is not None:  # only a change that changes nothing reads (or a checksum dropped)
        assert value == original or (field == "crc32" and value is None), (field, value)


@FUZZ
@given(flips=FLIPS, cut=CUT, shape=st.none() | JSON)
def test_damaged_masks_files_load_or_raise(setup, flips, cut, shape):
    path = setup.bases["dense"] / hostile.MASKS
    if shape is None:
        data = _damage(path.read_bytes(), flips, cut)
    else:
        with safe_open(str(path), framework="np") as f:
            metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        shapes = json.loads(metadata["shapes"])
        shapes[next(iter(shapes))] = shape
        metadata["shapes"] = json.dumps(shapes)
        data = save_numpy(tensors, metadata=metadata)
    masks = _read_bounded(setup, hostile.MASKS, data, lambda p: load_masks(p, setup.model))
    params = dict(setup.model.named_parameters())
    for name, mask in (masks or {}).items():
        assert mask.shape == params[name].shape and mask.dtype == torch.bool


@FUZZ
@given(
    field=st.sampled_from([f.name for f in PrunerConfig.__dataclass_fields__.values()]),
    value=JSON | st.sampled_from(["afr", "snip", "2:4", "global", -1, 0.5, 1.5, 5, "5", ["x"]]),
    flips=FLIPS,
    cut=CUT,
)
def test_damaged_pruner_configs_load_or_raise(setup, field, value, flips, cut):
    data = json.loads((setup.bases["dense"] / "pruner_config.json").read_text())
    data[field] = value
    text = _damage(json.dumps(data).encode(), flips, cut)
    config = _read_bounded(setup, "pruner_config.json", text, PrunerConfig.from_pretrained)
    assert config is None or isinstance(config, PrunerConfig)
