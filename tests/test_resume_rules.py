"""What a fresh run starts anew, what --resume carries on, and what it refuses."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from asr.data.manifest import Utterance
from asr.package import load_package
from asr.train import TrainingError, train
from tests.conftest import TRAIN_TEXTS
from tests.test_ctc_training import final_weights, tiny_experiment


def dev_set(train_shards: list[str]) -> list[Utterance]:
    """The training fixture's own clips as a dev set (what is scored does not matter here)."""
    audio = Path(train_shards[0]).parents[1] / "audio"
    return [Utterance(f"u{i:02d}", str(audio / f"u{i:02d}.flac"), text, 0.3) for i, text in enumerate(TRAIN_TEXTS[:4])]


def log_records(exp: Path) -> list[dict]:
    return [json.loads(line) for line in (exp / "train_log.jsonl").read_text().splitlines()]


def test_resume_refuses_other_model_settings_and_leaves_config_json(train_shards, tmp_path):
    exp = tmp_path / "exp"
    train(tiny_experiment(epochs=1), train_shards, [], exp, device="cpu")
    before = (exp / "config.json").read_text()
    with pytest.raises(TrainingError, match=r"--resume: model\.hidden is 32 here, 16 in the checkpoint"):
        cfg = tiny_experiment(epochs=2)
        train(replace(cfg, model=replace(cfg.model, hidden=32)), train_shards, [], exp, device="cpu", resume=True)
    assert (exp / "config.json").read_text() == before
    # Settings of the run itself (epochs, learning rate, batches) may change on resume.
    assert train(tiny_experiment(epochs=2, lr=5e-4), train_shards, [], exp, device="cpu", resume=True)["epochs"] == 2


def test_a_fresh_run_starts_its_log_and_epoch_packages_anew(train_shards, tmp_path):
    exp = tmp_path / "exp"
    train(tiny_experiment(epochs=2), train_shards, [], exp, device="cpu")
    assert (exp / "ckpt" / "epoch-2.pt").is_file()
    again = train(tiny_experiment(epochs=1), train_shards, [], exp, device="cpu")
    steps = [r["step"] for r in log_records(exp) if "loss" in r]
    assert steps == list(range(1, again["steps"] + 1))
    assert [r["epoch"] for r in log_records(exp) if "train_loss" in r] == [1]
    assert not (exp / "ckpt" / "epoch-2.pt").exists()


def test_a_dev_set_added_on_resume_is_scored_and_picks_the_model(train_shards, tmp_path):
    exp = tmp_path / "exp"
    first = train(tiny_experiment(epochs=1), train_shards, [], exp, device="cpu")
    assert first["best_dev_wer"] is None
    resumed = train(tiny_experiment(epochs=2), train_shards, dev_set(train_shards), exp, device="cpu", resume=True)
    assert resumed["best_dev_wer"] is not None and 0 <= resumed["best_dev_wer"]
    meta = load_package(exp / "model.pt").meta
    assert meta["epoch"] == 2 and meta["dev_wer"] == resumed["best_dev_wer"]


def test_a_time_stop_with_a_dev_set_resumes_exactly(train_shards, tmp_path):
    """The stop validates on the dev set; that must not move the random state the checkpoint keeps."""
    dev = dev_set(train_shards)
    straight = train(tiny_experiment(epochs=2), train_shards, dev, tmp_path / "straight", device="cpu")
    stopped = train(tiny_experiment(epochs=2, max_minutes=1e-9), train_shards, dev, tmp_path / "cut", device="cpu")
    assert stopped["steps"] == 1 and stopped["best_dev_wer"] is not None
    resumed = train(tiny_experiment(epochs=2), train_shards, dev, tmp_path / "cut", device="cpu", resume=True)
    assert resumed["steps"] == straight["steps"]
    got, expected = final_weights(tmp_path / "cut"), final_weights(tmp_path / "straight")
    assert all(torch.equal(got[k], v) for k, v in expected.items())


def test_resume_carries_the_clock_of_a_time_budget(train_shards, tmp_path, caplog):
    """train.max_minutes is the whole run's budget: a resume goes on with the time already used (a
    learning rate paced by it must not start its decay over), and one with the budget spent trains
    no further."""
    exp = tmp_path / "exp"
    budget = dict(epochs=50, max_minutes=1e-9, schedule_by_time=True)
    first = train(tiny_experiment(**budget), train_shards, [], exp, device="cpu")
    used = torch.load(exp / "ckpt" / "state.pt", weights_only=False)["running"]["elapsed"]
    assert first["steps"] == 1 and used > 0
    again = train(tiny_experiment(**budget), train_shards, [], exp, device="cpu", resume=True)
    assert again["steps"] == 1 and "is used up" in caplog.text
    more = train(tiny_experiment(epochs=2), train_shards, [], exp, device="cpu", resume=True)
    assert more["steps"] > 1 and more["train_seconds"] >= round(used, 1)


def test_resume_takes_another_lstm_layout_but_not_other_model_settings():
    """model.lstm_layout says how the same weights run, so a run may resume under another one."""
    from asr.train import changed_settings
    saved = {"model": {"hidden": 16, "lstm_layout": "auto"}, "train": {"lr": 1e-3}}
    assert changed_settings(saved, {"model": {"hidden": 16, "lstm_layout": "padded"}, "train": {"lr": 2e-3}}) == []
    assert changed_settings(saved, {"model": {"hidden": 32, "lstm_layout": "padded"}}) == [
        "model.hidden is 32 here, 16 in the checkpoint"]
