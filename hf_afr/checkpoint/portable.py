"""Structured checkpoints that load with and without hf_afr.

A structurally pruned model saved in the dense format gets two additions to its folder:

- `modeling_hf_afr_structured.py`: `hf_afr/structure/slicing.py` copied verbatim (it imports
  only torch and transformers) followed by one small class, `Structured<Family class>`, a
  subclass of the family's transformers class that gives itself the per-layer widths of its
  config in `__init__`. `config.json`'s `auto_map` names it, so that
  `AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)` and
  `pipeline("image-classification", model=folder, trust_remote_code=True)` work without hf_afr.
- `quantization_config = {"quant_method": "hf_afr_structured"}` in `config.json`: with hf_afr
  installed, plain `from_pretrained(folder)` (no remote code) goes through hf_afr's loader
  (`hf_afr.checkpoint.structured_loader`), which narrows the model the same way before the
  weights are read. The remote class removes this marker before loading, so plain transformers
  never sees an unknown quantization method.

A compact checkpoint of a structured model needs hf_afr anyway (its weights are encoded): its
own `quantization_config` routes it to the compact loader, which also applies the widths.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from typing import Any

from ..architectures import get_architecture
from ..files import atomic_write_text
from ..structure import slicing
from ..version import __version__
from .formats import CONFIG_NAME, REMOTE_CODE_NAME
from .widths import LAYER_HEADS_KEY, LAYER_UNITS_KEY, config_widths

STRUCTURED_QUANT_METHOD = "hf_afr_structured"
AUTO_CLASS = "AutoModelForImageClassification"

_LOADER = '''


# --------------------------------------------------------------------------- the model class
# Written by hf_afr {version}. Everything above is hf_afr/structure/slicing.py verbatim; below,
# the class that `auto_map` in config.json names, so that this folder loads where hf_afr is not
# installed: `{auto_class}.from_pretrained(folder, trust_remote_code=True)`.

import logging as _logging  # noqa: E402

import transformers as _transformers  # noqa: E402

_LAYOUT = BlockLayout(**{layout})
_MARKER = {marker!r}


class _NoLoadReport(_logging.Filter):
    def filter(self, record):
        return "LOAD REPORT" not in record.getMessage()


class {class_name}(sized_class(_transformers.{base_name}, _LAYOUT)):
    """`{base_name}` whose blocks have the widths its config lists per block.

    `config.{heads_key}[i]` heads and `config.{units_key}[i]` MLP
    units in block i, set in `__init__`; the weights then load as saved (none re-expanded).
    """

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        config = kwargs.get("config")
        marker = getattr(config, "quantization_config", None)
        if isinstance(marker, dict) and marker.get("quant_method") == _MARKER:
            del config.quantization_config  # routes hf_afr's own loader; not needed here
        if kwargs.pop("ignore_mismatched_sizes", False):
            return super().from_pretrained(*args, ignore_mismatched_sizes=True, **kwargs)
        # Weights that disagree with the widths: one line instead of the size-mismatch report.
        wants_info = kwargs.pop("output_loading_info", False)
        report, quiet = _logging.getLogger("transformers.modeling_utils"), _NoLoadReport()
        report.addFilter(quiet)
        try:
            model, info = super().from_pretrained(
                *args, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
            )
        finally:
            report.removeFilter(quiet)
        for key, stored, expected in sorted(info.get("mismatched_keys") or ()):
            raise ValueError(
                f"{{args[0] if args else cls.__name__}}: {{key}} is stored with shape "
                f"{{list(stored)}} but the per-layer widths in config.json ({heads_key}, "
                f"{units_key}) give it {{list(expected)}}; the widths and the weights do not "
                "belong together."
            )
        others = sorted({{*info.get("missing_keys", ()), *info.get("unexpected_keys", ())}})
        if others:
            report.warning(f"Weights missing from or unused by the checkpoint: {{others}}")
        return (model, info) if wants_info else model
'''


def remote_class_name(model_or_config: Any) -> str:
    """`Structured<Family classifier>`, the class the remote code defines."""
    return f"Structured{get_architecture(model_or_config).model_class}"


def remote_code_source(model_or_config: Any) -> str:
    """The self-contained modeling file of a structured checkpoint of this family."""
    arch = get_architecture(model_or_config)
    layout = {k: v for k, v in dataclasses.asdict(arch.layout).items()}
    return inspect.getsource(slicing).rstrip("\n") + _LOADER.format(
        version=__version__,
        auto_class=AUTO_CLASS,
        layout=repr(layout),
        heads_key=LAYER_HEADS_KEY,
        units_key=LAYER_UNITS_KEY,
        marker=STRUCTURED_QUANT_METHOD,
        class_name=remote_class_name(arch.model_type),
        base_name=arch.model_class,
    )


def structured_config_entries(model_or_config: Any) -> dict[str, Any]:
    """What `config.json` of a dense-format structured checkpoint adds: `auto_map` and marker."""
    return {
        "auto_map": {
            AUTO_CLASS: f"{REMOTE_CODE_NAME.removesuffix('.py')}.{remote_class_name(model_or_config)}"
        },
        "quantization_config": {"quant_method": STRUCTURED_QUANT_METHOD},
    }


def write_portable_files(folder: str | os.PathLike, model_or_config: Any) -> bool:
    """Make a dense-format folder of a structured model load with and without hf_afr.

    Writes the modeling file and adds `auto_map` and the loader marker to `config.json` (each
    file atomically). A dense model's folder is left as it is.

    Returns:
        `bool`: whether the model is structured (and the files were written).
    """
    config = getattr(model_or_config, "config", model_or_config)
    if config_widths(config) is None:
        return False
    folder = os.fspath(folder)
    atomic_write_text(os.path.join(folder, REMOTE_CODE_NAME), remote_code_source(config))
    config_path = os.path.join(folder, CONFIG_NAME)
    with open(config_path, encoding="utf-8") as f:
        config_dict = json.load(f)
    config_dict.update(structured_config_entries(config))
    atomic_write_text(config_path, json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    return True


def loading_card_section(load_id: str, has_image_processor: bool, has_masks: bool = False) -> str:
    """The model card's loading instructions for a dense-format structured checkpoint.

    Args:
        load_id (`str`): the Hub id (or folder) the code snippets load.
        has_image_processor (`bool`): whether the folder holds an image processor (then the
            `pipeline` lines are shown).
        has_masks (`bool`, defaults to `False`): whether masks of individual weights are stored
            beside it (a structured model that is also sparse).
    """
    without = (
        f'classifier = pipeline("image-classification", model="{load_id}", trust_remote_code=True)'
        if has_image_processor
        else f'model = {AUTO_CLASS}.from_pretrained("{load_id}", trust_remote_code=True)'
    )
    imports = "pipeline" if has_image_processor else AUTO_CLASS
    masks = (
        " The masks of the individual weights pruned inside it are stored beside it "
        "(`pruning_masks.safetensors`)."
        if has_masks
        else ""
    )
    return "\n".join(
        [
            "A smaller dense transformers checkpoint: every block keeps its own number of "
            "attention heads and MLP hidden units, recorded in `config.json` "
            f"(`{LAYER_HEADS_KEY}`, `{LAYER_UNITS_KEY}`). It loads into the small model "
            f"(no weight is re-expanded) in two ways.{masks}",
            "",
            "With hf_afr installed, plain transformers:",
            "",
            "```python",
            "import hf_afr  # registers the loader of per-layer widths with transformers",
            f"from transformers import {AUTO_CLASS}",
            "",
            f'model = {AUTO_CLASS}.from_pretrained("{load_id}")',
            "```",
            "",
            f"Without hf_afr: the folder carries its own loader (`{REMOTE_CODE_NAME}`, which "
            "needs only torch and transformers), allowed with `trust_remote_code=True`:",
            "",
            "```python",
            f"from transformers import {imports}",
            "",
            without,
            "```",
            "",
            f"ONNX (dynamic batch, checked against PyTorch): `hf-afr export {load_id} --format "
            f"onnx --output {load_id.split('/')[-1]}-onnx`.",
        ]
    )
