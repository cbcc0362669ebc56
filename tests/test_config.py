"""asr.config: YAML + key=value overrides; unknown keys and wrong types fail with the key named."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from asr.config import (RULES, ConfigError, ExperimentConfig, ModelConfig, from_dict, load_config, parse_override,
                        to_dict)

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


@pytest.mark.parametrize("override", ["train.lr=[", "model.hidden={a", "model.subsample=@x"])
def test_override_that_is_not_yaml_is_an_error_naming_it(override):
    with pytest.raises(ConfigError, match=f"override '{re.escape(override)}': the value is not valid YAML"):
        load_config(None, [override])


def test_yaml_syntax_error_in_the_file_is_one_line_with_its_place(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hidden: [1,\n train: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: invalid YAML (line 4, column 1: "), msg


@pytest.mark.parametrize("override, key, got", [
    ("model.stride=0", "model.stride", "0"),
    ("model.hidden=0", "model.hidden", "0"),
    ("features.n_mels=0", "features.n_mels", "0"),
    ("train.max_frames=0", "train.max_frames", "0"),
    ("train.accum_steps=0", "train.accum_steps", "0"),
    ("train.log_every=0", "train.log_every", "0"),
    ("train.lr=nan", "train.lr", "nan"),
    ("train.lr=.inf", "train.lr", "inf"),
    ("train.lr=0", "train.lr", "0.0"),
    ("train.lr=-1e-3", "train.lr", "-0.001"),
    ("train.epochs=-1", "train.epochs", "-1"),
    ("train.seed=-1", "train.seed", "-1"),
    ("model.dropout=1.0", "model.dropout", "1.0"),
    ("model.subsample=conv3d", "model.subsample", "'conv3d'"),
    ("tokenizer.model_type=foo", "tokenizer.model_type", "'foo'"),
    ("tokenizer.kind=bpe", "tokenizer.kind", "'bpe'"),
])
def test_out_of_range_value_is_an_error_naming_key_value_and_range(override, key, got):
    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}': expected .+, got {re.escape(got)}$"):
        load_config(None, [override])


def test_out_of_range_value_in_the_file_is_an_error_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  accum_steps: 0\n")
    with pytest.raises(ConfigError, match="'train.accum_steps': expected >= 1, got 0"):
        load_config(path)


def test_conv2d_needs_stride_4():
    with pytest.raises(ConfigError, match="'model.stride': conv2d"):
        load_config(None, ["model.subsample=conv2d", "model.stride=3"])
    assert load_config(None, ["model.subsample=conv2d"]).model.stride == 4


def test_zero_where_it_means_off_is_allowed():
    cfg = load_config(None, ["train.max_minutes=0", "train.num_workers=0", "train.threads=0", "train.cmvn_utts=0",
                             "train.save_every_steps=0", "train.warmup_steps=0", "features.f_max=0",
                             "specaug.freq_masks=0", "specaug.freq_warp=0", "model.dropout=0", "train.speaker_cmn_prob=0"])
    assert cfg.train.max_minutes == 0 and cfg.train.num_workers == 0 and cfg.model.dropout == 0
    for kind in ("unigram", "bpe", "char", "word"):
        assert load_config(None, [f"tokenizer.model_type={kind}"]).tokenizer.model_type == kind


def test_every_range_rule_names_a_real_key():
    for key in RULES:
        section, name = key.split(".")
        assert name in {f.name for f in dataclasses.fields(getattr(ExperimentConfig(), section))}, key
