"""Model cards for pruned checkpoints: Hub metadata, sparsity table, per-layer density plot.

The card is rendered from the Jinja template `hf_afr/model_cards/pruned_model_card.md` (also
reachable as `model_cards/pruned_model_card.md` at the top of the repository) with
`huggingface_hub.ModelCard`. The part hf_afr writes sits between two HTML comments, so re-saving
into a folder whose README.md was edited by hand updates that part and the metadata and keeps
everything else. The loading code a card shows is the code that works for that folder: the
`pipeline` line only where an image processor was saved.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..config import CONTROLS, PrunerConfig
from ..files import atomic_path, atomic_write_text
from ..report import SparsityReport
from ..untrusted import MAX_JSON_DEPTH, CheckpointError, decode_utf8, json_depth
from ..version import __version__
from .card_data import PrunedCardData
from .formats import DENSITY_PLOT_NAME, MODEL_CARD_NAME, check_format, weights_file

TEMPLATE_NAME = "pruned_model_card.md"
TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "model_cards" / TEMPLATE_NAME
CARD_START = "<!-- hf_afr:card:start -->"
CARD_END = "<!-- hf_afr:card:end -->"
MAX_CARD_BYTES = 4 * 2**20
"""Largest existing README.md read (its metadata merged into a new card)."""

METHODS = {
    "afr": (
        "AFR (Adaptive Feature Retention)",
        "Each weight is scored by the z-scored ReFer score (how much it keeps the pretrained "
        "feature representations) plus the z-scored SNIP score (how much it moves the "
        "downstream loss); the lowest scores are pruned.",
    ),
    "refer": (
        "ReFer (Retaining Feature Representation)",
        "Each weight is scored by its effect on the mean singular value of every layer's feature "
        "matrix, so the pretrained representations are kept; the lowest scores are pruned.",
    ),
    "snip": (
        "SNIP",
        "Each weight is scored by |dL/dw * w| on the downstream loss; the lowest scores are pruned.",
    ),
    "grasp": (
        "GraSP (Gradient Signal Preservation)",
        "Each weight is scored by -w * (Hg), with g the downstream loss gradient and H the "
        "loss Hessian, so that pruning preserves the gradient flow; the lowest scores are pruned.",
    ),
    "fisher": (
        "Fisher (OBD saliency)",
        "Each weight is scored by 0.5 * sum_n (dL_n/dw)^2 * w^2 with per-sample downstream "
        "losses L_n (empirical Fisher); the lowest scores are pruned.",
    ),
    "synflow": (
        "SynFlow (iterative synaptic flow)",
        "Data-free: each weight is scored by its share of the synaptic flow through the network "
        "with all parameters made positive, over iterative rounds of scoring and pruning.",
    ),
    "magnitude": ("magnitude pruning", "The weights of smallest absolute value are pruned."),
    "random": ("random pruning", "Weights are pruned uniformly at random (a baseline)."),
}

# With a structure, whole heads and MLP units are scored (docs/structured.md).
GROUP_DESCRIPTIONS = {
    "afr": "the z-scored ReFer score (how much the group keeps the pretrained feature "
    "representations) plus the z-scored SNIP score (how much it moves the downstream loss)",
    "refer": "its effect on the mean singular value of every layer's feature matrix",
    "snip": "|dL/dc| on the downstream loss",
    "fisher": "the squared loss derivative of its gate, summed over the scoring batches",
    "magnitude": "the L2 norm of the weights it owns",
    "random": "a random number (a baseline)",
}

_SCRIPT_HINT = (
    "# Scoring needs batches of {'pixel_values', 'labels'} from the downstream training set."
)


def create_model_card(
    pruner_config: PrunerConfig,
    report: SparsityReport | None,
    card_data: PrunedCardData | None = None,
    *,
    checkpoint_format: str = "dense",
    model_type: str | None = None,
    default_name: str | None = None,
    weights_size: int | None = None,
    has_image_processor: bool = False,
    structure: str | None = None,
    loading_section: str | None = None,
) -> ModelCard:
    """Render the model card of a pruned checkpoint.

    Args:
        pruner_config (`PrunerConfig`): the configuration the masks were selected with.
        report (`SparsityReport`): the sparsity of the masks (`SparsityReport.from_masks`).
        card_data (`PrunedCardData`, *optional*): what the card reports besides the pruning
            (base model, datasets, accuracy, command, extra sections, ...).
        checkpoint_format (`str`, defaults to `"dense"`): `"dense"` or `"compact"`; sets the loading
            instructions and `library_name` (`transformers`, or `hf_afr` for compact).
        model_type (`str`, *optional*): the transformers `model_type`, added to the tags.
        default_name (`str`, *optional*): the title when `card_data` names neither the model nor
            a repository (e.g. the folder's name).
        weights_size (`int`, *optional*): size in bytes of the weights file, shown in the card.
        has_image_processor (`bool`, defaults to `False`): whether the folder holds an image
            processor; only then does the card show `pipeline(...)` as the way to load it.
        structure (`str`, *optional*): markdown about a structurally pruned model
            (`hf_afr.structure.report.structure_card_section`); `report` is then optional.
        loading_section (`str`, *optional*): markdown replacing the dense format's loading
            instructions (`hf_afr.checkpoint.portable.loading_card_section` for structured
            checkpoints, which load with and without hf_afr).

    Returns:
        `huggingface_hub.ModelCard`
    """
    check_format(checkpoint_format)
    report = report if report is not None and report.tensors else None
    if report is None and structure is None:
        raise ValueError("The model card describes a pruned model: prune it (or load masks) first.")
    card = card_data or PrunedCardData()
    base_model = card.base_model
    hub_base_model = base_model if base_model and _is_hub_id(base_model) else None
    datasets = card.datasets
    datasets = [datasets] if isinstance(datasets, str) else list(datasets or []) or None
    repo_id = card.repo_id
    model_name = card.model_name or (repo_id.split("/")[-1] if repo_id else default_name)
    model_name = model_name or "pruned-model"
    method = pruner_config.method
    title, description = METHODS.get(method, (method, ""))
    if pruner_config.structure is not None and method in GROUP_DESCRIPTIONS:
        description = (
            "Each attention head and MLP hidden unit is scored through a gate c on its output by "
            f"{GROUP_DESCRIPTIONS[method]}; the lowest-scored are removed, leaving a smaller dense "
            "model."
        )
    eval_dataset = card.eval_dataset or (datasets or [None])[0]
    eval_results = _eval_results(card.accuracy, eval_dataset, card.eval_split)
    card_metadata = ModelCardData(
        library_name="hf_afr" if checkpoint_format == "compact" else "transformers",
        pipeline_tag="image-classification",
        base_model=hub_base_model,
        datasets=datasets,
        license=card.license,
        language=card.language,
        tags=_unique(
            ["hf_afr", "pruning", "sparse", "afr", method, "vision", model_type, *(card.tags or [])]
            + ([f"control-{pruner_config.control}"] if pruner_config.control else [])
        ),
        eval_results=eval_results,
        # `model-index` needs a name; without evaluation results it is not metadata.
        model_name=model_name if eval_results else None,
    )
    command, language_tag = card.command, "bash"
    if command is None:
        command, language_tag = _python_reproduction(
            pruner_config, hub_base_model or base_model, checkpoint_format
        )
    return ModelCard.from_template(
        card_metadata,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        load_id=repo_id or model_name,
        base_model=base_model,
        base_model_url=f"https://huggingface.co/{hub_base_model}" if hub_base_model else None,
        sparsity=report.sparsity if report else None,
        structure_section=structure,
        loading_section=loading_section,
        method_title=title,
        method_description=description,
        control=pruner_config.control,
        control_description=CONTROLS.get(pruner_config.control or "", ""),
        hf_afr_version=__version__,
        checkpoint_format=checkpoint_format,
        weights_file=weights_file(checkpoint_format),
        weights_size=_human_size(weights_size) if weights_size is not None else "size not recorded",
        pruner_config_json=json.dumps(pruner_config.to_dict(), indent=2, sort_keys=True),
        reproduce_command=command,
        reproduce_language=language_tag,
        density_plot=DENSITY_PLOT_NAME,
        sparsity_table=report.to_markdown() if report else "",
        fully_pruned=report.fully_pruned if report else [],
        has_image_processor=has_image_processor,
        training_lines=[f"{key}: {value}" for key, value in (card.training or {}).items()],
        eval_lines=[
            f"{r.metric_name.lower()}: {r.metric_value:.2%} ({r.dataset_name}"
            + (f", {r.dataset_split} split)" if r.dataset_split else ")")
            for r in card_metadata.eval_results or []
        ],
        extra_sections=list(card.extra_sections.items()),
    )


def merge_model_cards(existing: ModelCard, new: ModelCard) -> ModelCard:
    """Update `existing` with `new`: metadata merged, hf_afr's section replaced or appended.

    Metadata keys set by `new` win, except that tags are united and evaluation results of other
    datasets/metrics are kept. Text outside the hf_afr section is kept verbatim.
    """
    data = existing.data.to_dict()
    new_data = new.data.to_dict()
    for key, value in new_data.items():
        if key in ("tags", "datasets") and data.get(key):
            data[key] = _unique([*_as_list(data[key]), *_as_list(value)])
        elif key != "model-index":
            data[key] = value
    merged = ModelCardData(**data, ignore_metadata_errors=True)
    if new.data.eval_results:
        keep = [
            r
            for r in existing.data.eval_results or []
            if not any(r.is_equal_except_value(n) for n in new.data.eval_results)
        ]
        merged.eval_results = keep + list(new.data.eval_results)
        merged.model_name = existing.data.model_name or new.data.model_name
    section = _section(new.text)
    text = existing.text
    if CARD_START in text and CARD_END in text.split(CARD_START, 1)[1]:
        before, rest = text.split(CARD_START, 1)
        text = before + section + rest.split(CARD_END, 1)[1]
    else:
        text = text.rstrip() + ("\n\n" if text.strip() else "") + section + "\n"
    body = text.lstrip("\n")
    return ModelCard(f"---\n{merged.to_yaml()}\n---\n\n{body}")


def save_model_card(
    card: ModelCard,
    save_directory: str | os.PathLike,
    report: SparsityReport | None,
    existing: str | os.PathLike | None = None,
) -> str:
    """Write README.md (merged into `existing`, or the folder's own README.md) and the density plot.

    Returns:
        `str`: the path of the README.md written.
    """
    save_directory = os.fspath(save_directory)
    os.makedirs(save_directory, exist_ok=True)
    path = os.path.join(save_directory, MODEL_CARD_NAME)
    existing = existing if existing is not None else path
    if os.path.isfile(existing):
        card = merge_model_cards(load_card(existing), card)
    if report is not None and report.tensors:
        plot_density(report, os.path.join(save_directory, DENSITY_PLOT_NAME))
    atomic_write_text(path, str(card))
    return path


def load_card(path: str | os.PathLike) -> ModelCard:
    """An existing model card, read with bounded size and YAML metadata depth.

    Raises:
        CheckpointError: if the file is too large, not UTF-8, or its metadata cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read(MAX_CARD_BYTES + 1)
    if len(data) > MAX_CARD_BYTES:
        raise CheckpointError(path, None, f"is larger than the {MAX_CARD_BYTES} bytes accepted.")
    text = decode_utf8(data, path)
    head = text.split("\n---", 1)[0] if text.startswith("---") else ""
    if json_depth(head) > MAX_JSON_DEPTH or _indent_depth(head) > MAX_JSON_DEPTH:
        raise CheckpointError(path, "metadata", "nests too deep to be read.")
    try:
        card = ModelCard(text, ignore_metadata_errors=True)
        card.data.to_dict()
    except Exception as err:  # noqa: BLE001 - YAML and card errors of every kind
        raise CheckpointError(
            path, "metadata", f"cannot be read ({' '.join(str(err).split())[:200]})."
        ) from None
    return card


def _indent_depth(head: str) -> int:
    """Block-YAML nesting of front matter, bounded by its deepest indentation."""
    return max((len(line) - len(line.lstrip(" -")) for line in head.splitlines()), default=0) // 2


def plot_density(report: SparsityReport, path: str | os.PathLike) -> None:
    """Save a PNG bar chart of the density (kept fraction) of every pruned tensor."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [t.name.removesuffix(".weight") for t in report.tensors]
    density = [1.0 - t.sparsity for t in report.tensors]
    figure = Figure(figsize=(7.0, 1.2 + 0.22 * len(names)), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = range(len(names))
    axes.barh(positions, density, color=[_module_colour(n) for n in names])
    axes.axvline(1.0 - report.sparsity, color="black", linestyle="--", linewidth=1)
    axes.set_yticks(list(positions), names, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlim(0.0, max([*density, 1.0 - report.sparsity]) * 1.1 or 1.0)
    axes.set_xlabel("density (fraction of weights kept)")
    axes.set_title(f"Per-layer density, {report.sparsity:.1%} sparse overall (dashed: global)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getvalue())


def _eval_results(accuracy: float | None, dataset: str | None, split: str | None):
    if accuracy is None:
        return None
    if dataset is None:
        raise ValueError(
            "`accuracy` needs `eval_dataset` (or `datasets`) to say what it was measured on."
        )
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type="accuracy",
            metric_name="Accuracy",
            metric_value=round(float(accuracy), 4),
        )
    ]


def _python_reproduction(config: PrunerConfig, base_model: str | None, fmt: str) -> tuple[str, str]:
    options = ", ".join(f"{k}={v!r}" for k, v in sorted(config.to_dict().items()))
    return (
        "from hf_afr import AFRPruner, PrunerConfig\n\n"
        f"config = PrunerConfig({options})\n"
        f"pruner = AFRPruner.from_pretrained({base_model or '<base model>'!r}, config)\n"
        f"{_SCRIPT_HINT}\n"
        "pruner.prune(train_batches)\n"
        f"pruner.save_pretrained('pruned-vit', checkpoint_format={fmt!r})",
        "python",
    )


def _is_hub_id(name: str) -> bool:
    """A Hub repository id ("org/name" or "name"), not a path that exists on this machine."""
    return not os.path.exists(name) and not os.path.isabs(name) and name.count("/") <= 1


def _section(text: str) -> str:
    start, end = text.find(CARD_START), text.find(CARD_END)
    return text[start : end + len(CARD_END)]


def _module_colour(name: str) -> str:
    for key, colour in (
        ("q_proj", "#4c72b0"),
        ("k_proj", "#55a868"),
        ("v_proj", "#c44e52"),
        ("o_proj", "#8172b2"),
        ("fc1", "#ccb974"),
        ("fc2", "#64b5cd"),
    ):
        if key in name:
            return colour
    return "#7f7f7f"


def _human_size(n: float) -> str:
    unit = "B"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _unique(items: list) -> list:
    return list(dict.fromkeys(i for i in items if i is not None))
