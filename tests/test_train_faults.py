"""Faults during training: non-finite losses are skipped and counted, too many in a row stop the
run naming the batch, a full disk stops it with the last good checkpoint intact (and resumable),
and a torn checkpoint is refused on --resume.

Faults are injected into the real training loop (``asr.train``) through monkeypatching: a loss
replaced by NaN for chosen batches, ``os.fsync`` failing with ENOSPC from the Nth checkpoint on.
"""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch

import asr.files
import asr.train as T
from asr.cli import main
from asr.package import read_checked
from tests.test_ctc_training import final_weights, tiny_experiment

OVERRIDES = ["features.n_mels=20", "model.subsample_channels=4", "model.hidden=16", "model.layers=2",
             "model.dropout=0.2", "train.max_frames=120", "train.max_batch=4", "train.num_workers=0",
             "train.warmup_steps=2", "train.cmvn_utts=0", "train.shuffle_buffer=4", "train.num_buckets=2",
             "train.bf16=false", "train.threads=1", "train.log_every=1", "train.epochs=2"]


def nan_loss_for(monkeypatch, poisoned: set[int]) -> list[list[str]]:
    """Make the loss of the ``poisoned`` batches (counted from 0) NaN; returns each batch's ids."""
    real = T.compute_loss
    seen: list[list[str]] = []

    def compute_loss(*args, **kwargs):
        out = real(*args, **kwargs)
        if out is not None:
            seen.append(out[1]["ids"])
            if len(seen) - 1 in poisoned:
                return out[0] * float("nan"), out[1]
        return out

    monkeypatch.setattr(T, "compute_loss", compute_loss)
    return seen


def test_a_non_finite_loss_skips_the_batch_and_is_counted(train_shards, tmp_path, monkeypatch, capsys):
    seen = nan_loss_for(monkeypatch, {1, 4})
    rc = main(["train", "--train", *train_shards, "--exp", str(tmp_path / "exp"), "--device", "cpu", *OVERRIDES])
    out, err = capsys.readouterr()
    assert rc == 3, "a skipped batch makes the exit status 3"
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["nonfinite"] == 2
    assert summary["steps"] == len(seen) - 2, "the two poisoned batches took no optimizer step"
    for k in (1, 4):
        assert f"non-finite loss (nan) in the batch of {', '.join(seen[k])}; batch skipped" in summary["skipped"]
    assert "2 training or dev items skipped" in err
    weights = final_weights(tmp_path / "exp")
    assert all(torch.isfinite(w).all() for w in weights.values()), "NaN never reached the weights"
    state = read_checked(tmp_path / "exp" / "ckpt" / "state.pt", "training checkpoint")
    assert all(torch.isfinite(s["exp_avg"]).all() for s in state["optimizer"]["state"].values())


def test_non_finite_gradients_with_a_finite_loss_skip_the_step(train_shards, tmp_path, monkeypatch):
    """An overflow in the backward pass (finite loss, inf gradients) must not reach the weights."""
    real_clip, calls = torch.nn.utils.clip_grad_norm_, []

    def clip(params, max_norm, *args, **kwargs):
        params = list(params)
        calls.append(len(calls))
        if len(calls) == 3:  # the third optimizer step's gradients overflow
            for p in params:
                if p.grad is not None:
                    p.grad.fill_(float("inf"))
        return real_clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    summary = T.train(tiny_experiment(epochs=1), train_shards, [], tmp_path / "exp", device="cpu")
    assert summary["nonfinite"] == 1 and summary["steps"] == len(calls) - 1
    assert any(s.startswith("non-finite gradient norm (inf) in the batch of ") for s in summary["skipped"])
    assert all(torch.isfinite(w).all() for w in final_weights(tmp_path / "exp").values())


def test_too_many_non_finite_losses_in_a_row_stop_the_run_naming_the_batch(train_shards, tmp_path, monkeypatch, capsys):
    seen = nan_loss_for(monkeypatch, {2, 3, 4})
    rc = main(["train", "--train", *train_shards, "--exp", str(tmp_path / "exp"), "--device", "cpu", *OVERRIDES,
               "train.max_nonfinite=3", "train.save_every_steps=1"])
    err = capsys.readouterr().err
    assert rc == 2
    line = next(x for x in err.splitlines() if x.startswith("asr train: error: "))
    assert "3 non-finite loss(es) in a row (train.max_nonfinite=3); last batch: " + ", ".join(seen[4]) in line
    assert "Traceback" not in err
    # The checkpoint is the last good step's: resuming continues from there.
    state = read_checked(tmp_path / "exp" / "ckpt" / "state.pt", "training checkpoint")
    assert state["step"] == 2


def test_two_runs_of_non_finite_losses_shorter_than_the_limit_go_on(train_shards, tmp_path, monkeypatch):
    """The limit counts losses in a row: a good batch in between resets it."""
    nan_loss_for(monkeypatch, {0, 1, 3, 4})
    summary = T.train(tiny_experiment(epochs=1, max_nonfinite=3), train_shards, [], tmp_path / "exp", device="cpu")
    assert summary["nonfinite"] == 4


def test_disk_full_stops_with_a_clear_error_and_the_last_checkpoint_intact(train_shards, tmp_path, monkeypatch, capsys):
    exp = tmp_path / "exp"
    cfg = OVERRIDES + ["train.save_every_steps=1"]
    straight = tmp_path / "straight"
    assert main(["train", "--train", *train_shards, "--exp", str(straight), "--device", "cpu", *cfg]) == 0
    capsys.readouterr()

    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) >= 7:  # two fsyncs per checkpoint (file, folder): the 4th checkpoint fails
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(asr.files.os, "fsync", fsync)
    rc = main(["train", "--train", *train_shards, "--exp", str(exp), "--device", "cpu", *cfg])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("asr train: error: "))
    assert "cannot write checkpoint" in line and "No space left on device" in line
    assert "the last good checkpoint is intact" in line
    state = read_checked(exp / "ckpt" / "state.pt", "training checkpoint")
    assert state["step"] == 3
    assert not [p.name for p in (exp / "ckpt").iterdir() if p.name.endswith(".tmp")], "no temporary file left"

    # Space is back: --resume finishes the run, and it is the run that never failed.
    monkeypatch.setattr(asr.files.os, "fsync", real_fsync)
    assert main(["train", "--train", *train_shards, "--exp", str(exp), "--device", "cpu", "--resume", *cfg]) == 0
    got, expected = final_weights(exp), final_weights(straight)
    assert all(torch.equal(got[k], v) for k, v in expected.items())


@pytest.mark.parametrize("damage, message", [
    ("truncate", "is corrupt or truncated"),
    ("flip_weight", "does not match its checksum"),  # torch.load itself would not notice this one
])
def test_a_damaged_checkpoint_is_refused_on_resume(train_shards, tmp_path, capsys, damage, message):
    exp = tmp_path / "exp"
    assert main(["train", "--train", *train_shards, "--exp", str(exp), "--device", "cpu", *OVERRIDES,
                 "train.epochs=1"]) == 0
    path = exp / "ckpt" / "state.pt"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        weight = read_checked(path, "training checkpoint")["model"]["head.weight"].numpy().tobytes()
        at = bytes(data).find(weight)
        assert at > 0, "tensor bytes are stored as they are"
        data[at + 8] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    capsys.readouterr()
    rc = main(["train", "--train", *train_shards, "--exp", str(exp), "--device", "cpu", "--resume", *OVERRIDES])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"state.pt: training checkpoint {message}" in err, err
