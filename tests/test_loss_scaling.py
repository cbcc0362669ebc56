"""Loss scaling where the LSTM runs in fp16 (asr.train.lstm_in_fp16, train.loss_scaling): on the CPU
the scaler is forced on, where a power-of-two scale is exact in fp32, so training must give the very
weights it gives without; overflows lower the scale without counting as bad batches; the scale is
kept in checkpoints. The GPU test checks the premise: under bf16 autocast torch runs cuDNN's LSTM in fp16."""
import json

import pytest
import torch

import asr.train as T
from tests.test_ctc_training import final_weights, tiny_experiment

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def test_only_a_gpu_under_bf16_autocast_runs_the_lstm_in_fp16():
    assert T.lstm_in_fp16(torch.device("cuda"), True)
    assert not T.lstm_in_fp16(torch.device("cuda"), False)
    assert not T.lstm_in_fp16(torch.device("cpu"), True)


def scaled(monkeypatch, init: float) -> None:
    monkeypatch.setattr(T, "lstm_in_fp16", lambda device, bf16: True)
    monkeypatch.setattr(T, "INIT_LOSS_SCALE", init)


def test_a_power_of_two_scale_changes_nothing_where_nothing_overflows(train_shards, tmp_path, monkeypatch):
    cfg = tiny_experiment(epochs=1)
    plain = T.train(cfg, train_shards, [], tmp_path / "plain", device="cpu")
    scaled(monkeypatch, 2.0**16)
    with_scale = T.train(cfg, train_shards, [], tmp_path / "scaled", device="cpu")
    assert with_scale["steps"] == plain["steps"] > 0 and with_scale["scale_overflows"] == 0
    want, got = final_weights(tmp_path / "plain"), final_weights(tmp_path / "scaled")
    for name, w in want.items():
        assert torch.equal(got[name], w), name
    log = [json.loads(line) for line in (tmp_path / "scaled" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss_scale"] for r in log if "step" in r and "loss" in r][:1] == [2.0**16]
    state = torch.load(tmp_path / "scaled" / "ckpt" / "state.pt", weights_only=False)
    assert state["scaler"]["scale"] == 2.0**16 and state["scaler"]["_growth_tracker"] == with_scale["steps"]
    assert "loss_scale" not in (tmp_path / "plain" / "train_log.jsonl").read_text()


class FP16RangeModel(T.AcousticModel):
    """The model with fp16's range on its gradients: one past fp16's largest number becomes infinite,
    as it does when cuDNN's fp16 LSTM computes it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.parameters():
            p.register_hook(lambda g: torch.where(g.abs() > 65504, torch.full_like(g, float("inf")), g))


def test_overflows_lower_the_scale_and_are_not_bad_batches(train_shards, tmp_path, monkeypatch):
    """From a scale of 2^40, the gradients pass fp16's range until the scale has halved far enough:
    those steps are skipped without counting toward train.max_nonfinite (1 here: one bad batch would
    stop the run), and the run trains on at the lower scale."""
    scaled(monkeypatch, 2.0**24)
    monkeypatch.setattr(T, "AcousticModel", FP16RangeModel)
    summary = T.train(tiny_experiment(epochs=3, max_nonfinite=1), train_shards, [], tmp_path / "exp", device="cpu")
    assert summary["scale_overflows"] >= 10 and summary["nonfinite"] == 0 and summary["steps"] >= 5
    state = torch.load(tmp_path / "exp" / "ckpt" / "state.pt", weights_only=False)
    assert 1 <= state["scaler"]["scale"] <= 2.0**14
    assert all(torch.isfinite(w).all() for w in state["model"].values() if w.is_floating_point())


def test_a_resumed_run_goes_on_with_the_scale_it_had(train_shards, tmp_path, monkeypatch):
    scaled(monkeypatch, 2.0**24)
    monkeypatch.setattr(T, "AcousticModel", FP16RangeModel)
    T.train(tiny_experiment(epochs=3, max_nonfinite=1), train_shards, [], tmp_path / "exp", device="cpu")
    saved = torch.load(tmp_path / "exp" / "ckpt" / "state.pt", weights_only=False)["scaler"]
    loaded = []
    real = torch.amp.GradScaler.load_state_dict
    monkeypatch.setattr(torch.amp.GradScaler, "load_state_dict", lambda self, sd: (loaded.append(dict(sd)), real(self, sd)))
    more = T.train(tiny_experiment(epochs=4, max_nonfinite=1), train_shards, [], tmp_path / "exp", device="cpu",
                   resume=True)
    assert saved["scale"] < 2.0**24 and loaded == [saved]  # not the initial scale: the one the run had reached
    assert more["nonfinite"] == 0 and more["epochs"] == 4


@gpu
def test_on_a_gpu_bf16_autocast_runs_the_lstm_in_fp16():
    """The premise of loss scaling: should torch one day run cuDNN's LSTM in bf16 under bf16 autocast,
    this fails, and lstm_in_fp16 should say False there."""
    lstm = torch.nn.LSTM(128, 128).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, _ = lstm(torch.randn(5, 3, 128, device="cuda"))
    assert y.dtype == torch.float16
