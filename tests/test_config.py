import json

import pytest
from helpers import tiny_vit
from transformers import HfArgumentParser

import hf_afr
from hf_afr import AFRPruner, PrunerConfig
from hf_afr.checkpoint.formats import PRUNER_CONFIG_NAME


def test_defaults_follow_the_paper():
    config = PrunerConfig()
    assert config.method == "afr"
    assert config.scope == "global"
    # "auto": what the family's head reads, recorded concretely: the CLS token for a ViT.
    assert config.feature_token == "auto"
    assert AFRPruner(tiny_vit(), config).config.feature_token == "cls"
    assert config.feature_layers == "encoder"
    assert config.min_density == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"sparsity": "abc"}, "must be a number"),
        ({"method": "obd"}, "Unknown pruning method 'obd'"),
        ({"scope": "blockwise"}, "scope"),
        ({"feature_token": "max"}, "feature_token"),
        ({"feature_layers": "last"}, "feature_layers"),
        ({"num_batches": 0}, "num_batches"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
        ({"sparsity": 0.9, "min_density": 0.2}, "min_density"),
        ({"target_modules": [1, 2]}, "target_modules"),
    ],
)
def test_bad_values_raise_helpful_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrunerConfig(**kwargs)


def test_every_field_has_help_and_parses_from_the_command_line():
    parser = HfArgumentParser(PrunerConfig)
    (config,) = parser.parse_args_into_dataclasses(
        [
            "--method",
            "snip",
            "--sparsity",
            "0.95",
            "--target_modules",
            "q_proj",
            "v_proj",
            "--feature_token",
            "mean",
            "--prune_classifier",
            "true",
        ]
    )
    assert config.method == "snip" and config.sparsity == 0.95
    assert config.target_modules == ["q_proj", "v_proj"]
    assert config.feature_token == "mean" and config.prune_classifier is True
    for action in parser._actions[1:]:
        assert action.help, f"--{action.dest} has no help text"


def test_save_and_load_round_trip(tmp_path):
    config = PrunerConfig(method="refer", sparsity=0.98, target_modules=["fc1"], seed=7)
    path = config.save_pretrained(tmp_path)
    assert path.endswith(PRUNER_CONFIG_NAME)
    text = (tmp_path / PRUNER_CONFIG_NAME).read_text()
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data["hf_afr_version"] == hf_afr.__version__
    assert PrunerConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    assert PrunerConfig.from_pretrained(tmp_path / PRUNER_CONFIG_NAME) == config


def test_unknown_keys_are_dropped_with_a_warning(tmp_path, caplog):
    data = {**PrunerConfig(sparsity=0.5).to_dict(), "future_option": 3}
    (tmp_path / PRUNER_CONFIG_NAME).write_text(json.dumps(data))
    from transformers.utils import logging

    logging.enable_propagation()
    with caplog.at_level("WARNING"):
        config = PrunerConfig.from_pretrained(tmp_path)
    logging.disable_propagation()
    assert config.sparsity == 0.5
    assert "future_option" in caplog.text


def test_missing_or_corrupt_file_errors(tmp_path):
    with pytest.raises(ValueError, match="No pruner_config.json"):
        PrunerConfig.from_pretrained(tmp_path)
    (tmp_path / PRUNER_CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        PrunerConfig.from_pretrained(tmp_path)


def test_feature_centring_is_on_with_a_structure_and_off_without():
    assert not PrunerConfig().centers_features  # the paper's objective
    assert PrunerConfig(structure="mlp").centers_features
    assert not PrunerConfig(structure="mlp", feature_center=False).centers_features
    assert PrunerConfig(feature_center=True).centers_features
    with pytest.raises(ValueError, match="`feature_center` must be True, False or None"):
        PrunerConfig(feature_center="yes")


def test_a_saved_config_from_before_an_option_records_what_it_was_made_with(tmp_path):
    saved = PrunerConfig(structure="mlp").to_dict()
    assert saved["feature_center"] is None and saved["fit_head"] is None
    for name in ("feature_center", "fit_head"):
        del saved[name]
    old = PrunerConfig.from_dict({**saved, "hf_afr_version": "0.1.0"})
    assert not old.centers_features and not old.fits_head  # made before either existed
    assert PrunerConfig.from_dict(saved).centers_features  # written by hand: the defaults
    PrunerConfig(structure="mlp").save_pretrained(tmp_path)
    assert PrunerConfig.from_pretrained(tmp_path).centers_features  # saved now: None kept
