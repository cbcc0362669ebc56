"""asr.config: YAML + key=value overrides; unknown keys and wrong types fail with the key named."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from asr.config import ConfigError, ExperimentConfig, ModelConfig, from_dict, load_config, parse_override, to_dict

REPO = Path(__file__).resolve().parents[1]


def test_defaults_without_a_file():
    assert load_config() == ExperimentConfig()
    assert load_config(None, []) == ExperimentConfig()


def test_overrides_set_typed_values():
    cfg = load_config(None, ["model.hidden=32", "model.layers=1", "train.lr=0.0005", "train.bf16=false",
                             "tokenizer.kind=sentencepiece", "features.n_mels=40", "train.max_minutes=2"])
    assert cfg.model.hidden == 32 and cfg.model.layers == 1
    assert cfg.train.lr == 0.0005
    assert cfg.train.bf16 is False
    assert cfg.tokenizer.kind == "sentencepiece"
    assert cfg.features.n_mels == 40
    assert cfg.train.max_minutes == 2.0 and isinstance(cfg.train.max_minutes, float), "an int is accepted as a float"
    # Untouched keys keep their defaults.
    assert cfg.model.dropout == ModelConfig().dropout and cfg.train.epochs == ExperimentConfig().train.epochs


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    # PyYAML (YAML 1.1) reads "1e-3" as a string; a float field must still accept it.
    cfg = load_config(None, ["train.lr=1e-3", "train.weight_decay=5e-2"])
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.weight_decay == pytest.approx(5e-2)
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3e-4\n")
    assert load_config(path).train.lr == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=1e3"])  # not silently an int


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden: 64\n  layers: 2\ntrain:\n  epochs: 3\n  lr: 1.0e-3\n")
    cfg = load_config(path, ["model.layers=5"])
    assert cfg.model.hidden == 64
    assert cfg.model.layers == 5, "an override wins over the file"
    assert cfg.train.epochs == 3 and cfg.train.lr == pytest.approx(1e-3)


def test_shipped_configs_load():
    for path in sorted((REPO / "conf").glob("*.yaml")):
        assert isinstance(load_config(path), ExperimentConfig), path


@pytest.mark.parametrize("override, key", [
    ("train.lrr=0.1", "train.lrr"),
    ("model.hiden=10", "model.hiden"),
    ("trian.lr=0.1", "trian"),
])
def test_unknown_override_key_is_an_error_naming_it(override, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        load_config(None, [override])


def test_unknown_key_in_the_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden: 64\n  dropuot: 0.2\n")
    with pytest.raises(ConfigError, match="'model.dropuot'") as exc:
        load_config(path)
    assert "dropout" in str(exc.value), "the known keys are listed"


@pytest.mark.parametrize("override, key, expected", [
    ("model.hidden=big", "model.hidden", "int"),
    ("model.hidden=2.5", "model.hidden", "int"),
    ("model.hidden=true", "model.hidden", "int"),
    ("train.bf16=1", "train.bf16", "bool"),
    ("train.lr=fast", "train.lr", "float"),
    ("train.lr=true", "train.lr", "float"),
    ("tokenizer.kind=5", "tokenizer.kind", "str"),
    ("tokenizer.kind=null", "tokenizer.kind", "str"),
])
def test_wrong_type_is_an_error_naming_key_and_type(override, key, expected):
    with pytest.raises(ConfigError, match=f"config key '{key}': expected {expected}"):
        load_config(None, [override])


def test_a_section_needs_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="train"):
        load_config(None, ["train=3"])
    path = tmp_path / "c.yaml"
    path.write_text("model: 5\n")
    with pytest.raises(ConfigError, match="model"):
        load_config(path)


def test_override_must_be_key_value():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["model.hidden"])
    assert parse_override("model.hidden=32") == (["model", "hidden"], 32)
    assert parse_override("tokenizer.kind=a=b") == (["tokenizer", "kind"], "a=b")


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_configs_are_frozen_and_round_trip_through_dicts():
    cfg = load_config(None, ["model.hidden=48"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.hidden = 1  # type: ignore[misc]
    assert from_dict(ExperimentConfig, to_dict(cfg)) == cfg
