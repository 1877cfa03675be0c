"""Shared fixtures: a tiny random ViT checkpoint on disk and a tiny imagefolder of PNGs."""

from __future__ import annotations

import os

# Offline: the Hub clients and `evaluate.load` use their caches only (read at their import);
# the Hub tests point the clients at a local server and switch offline mode off themselves.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_vit_config
from PIL import Image
from transformers import ViTForImageClassification, ViTImageProcessorPil

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "owl")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: several seconds or more (still in the default run)")


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> str:
    """A random 2-layer, hidden-32 ViT classifier (3 labels) and a 32 px image processor."""
    folder = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    ViTForImageClassification(tiny_vit_config(patch_size=4)).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def write_image_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """PNGs in one sub-folder per class; the class sets the mean colour (learnable).

    Some images are grayscale ("L") and some RGBA, to exercise the RGB conversion.
    """
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((40, 40, 3))
                base[..., c] = 160
                pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                if i % 5 == 1:
                    image = image.convert("L")
                elif i % 5 == 2:
                    image = image.convert("RGBA")
                image.save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """`train/` (3 x 10 images) and `validation/` (3 x 4 images) imagefolders."""
    return write_image_folder(tmp_path_factory.mktemp("images"), {"train": 10, "validation": 4})


def load_script(name: str):
    """Import `scripts/<name>.py` as a module (its `main(argv)` runs in this process)."""
    path = REPO_ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"hf_afr_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a test module: tiny ops on a loaded machine are dominated by
    thread synchronisation otherwise (results do not depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_hf_afr_logger():
    """Each test starts with the "hf_afr" logger as a library user has it (a script run in
    process configures it for its command line)."""
    import logging

    yield
    logger = logging.getLogger("hf_afr")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test starts without accelerate's process-wide state (a Trainer run leaves it set)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
