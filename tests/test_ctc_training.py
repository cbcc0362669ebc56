"""asr.train pieces: CTC loss goes down, CTC feasibility, infeasible utterances dropped and counted,
labelling in the loader workers, a forward pass that reads nothing back from the device, LR schedule."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from asr.config import FeatureConfig, ModelConfig
from asr.data.shards import HOP
from asr.features import FeatureExtractor
from asr.model import AcousticModel
from asr.config import SpecAugConfig
from asr.targets import Labeler, ctc_min_frames
from asr.text import CharTokenizer
from asr.train import Counters, compute_loss, lr_factor
from tests.conftest import signal

CPU = torch.device("cpu")


def make_batch(items: list[tuple[str, int]]) -> dict:
    """(text, samples) pairs -> a padded batch as ShardBatches yields it."""
    lengths = torch.tensor([n for _, n in items])
    wav = torch.zeros(len(items), int(lengths.max()))
    for i, (_, n) in enumerate(items):
        wav[i, :n] = torch.from_numpy(signal(n / 16000, seed=i))
    return {"ids": [f"u{i}" for i in range(len(items))], "texts": [t for t, _ in items], "wav": wav,
            "lengths": lengths}


def setup(n_mels: int = 20, seed: int = 0):
    torch.manual_seed(seed)
    tok = CharTokenizer()
    frontend = FeatureExtractor(FeatureConfig(n_mels=n_mels)).eval()
    model = AcousticModel(ModelConfig(subsample_channels=4, hidden=32, layers=1, dropout=0.0), n_mels, tok.vocab_size)
    return tok, frontend, model


@pytest.mark.parametrize("target, frames", [
    ([], 0), ([5], 1), ([1, 2, 3], 3), ([4, 4], 3), ([4, 4, 4], 5), ([1, 2, 1], 3), ([1, 1, 2, 2], 6),
])
def test_ctc_min_frames_counts_a_blank_between_repeats(target, frames):
    assert ctc_min_frames(target) == frames


def test_ctc_min_frames_agrees_with_ctc_loss_feasibility():
    """At exactly ctc_min_frames the CTC loss is finite, one frame fewer it is infinite."""
    for target in ([3, 3, 3], [1, 2, 2, 1], [7]):
        need = ctc_min_frames(target)
        for frames, finite in ((need, True), (need - 1, False)):
            if frames == 0:
                continue
            lp = torch.randn(frames, 1, 10).log_softmax(-1)
            loss = F.ctc_loss(lp, torch.tensor([target]), torch.tensor([frames]), torch.tensor([len(target)]),
                              reduction="sum")
            assert bool(torch.isfinite(loss)) == finite, (target, frames)


def test_ctc_loss_decreases_with_adam_on_a_fixed_batch():
    tok, frontend, model = setup()
    batch = make_batch([("HELLO", 8000), ("AB BA", 6400), ("SEE", 4800)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    model.train()
    for _ in range(30):
        loss, stats = compute_loss(model, frontend, batch, tok, CPU, False, Counters())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses
    assert min(losses[-5:]) < min(losses[:5])


def test_training_steps_are_the_same_in_every_lstm_layout():
    """The LSTM layouts are ways of running the same model: eight Adam steps from the same weights on
    the same batch (lengths apart, so the split layout has tails) give the same losses in each."""
    losses = {}
    for layout in ("padded", "packed", "split"):
        tok, frontend, model = setup()
        model.cfg = ModelConfig(subsample_channels=4, hidden=32, layers=1, dropout=0.0, lstm_layout=layout)
        batch = make_batch([("HELLO", 8000), ("AB BA", 6400), ("SEE", 4800)])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses[layout] = []
        for _ in range(8):
            loss, _ = compute_loss(model, frontend, batch, tok, CPU, False, Counters())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[layout].append(loss.item())
    assert losses["padded"][-1] < losses["padded"][0]
    for layout in ("packed", "split"):
        assert losses[layout] == pytest.approx(losses["padded"], rel=1e-4), layout


def test_compute_loss_matches_ctc_loss_per_token():
    tok, frontend, model = setup()
    model.eval()
    batch = make_batch([("AB", 3200), ("CAB", 4000)])
    with torch.no_grad():
        loss, stats = compute_loss(model, frontend, batch, tok, CPU, False, Counters())
        feats, flen = frontend(batch["wav"], batch["lengths"])
        lp, olen = model(feats, flen)
        targets = [tok.encode("AB"), tok.encode("CAB")]
        ref = F.ctc_loss(lp.transpose(0, 1), torch.tensor(targets[0] + targets[1]), olen, torch.tensor([2, 3]),
                         blank=0, reduction="sum") / 5
    torch.testing.assert_close(loss, ref)
    assert stats["tokens"] == 5 and stats["utts"] == 2 and stats["ids"] == ["u0", "u1"]
    assert stats["frames"] == 3200 // HOP + 1 + 4000 // HOP + 1


def test_compute_loss_drops_infeasible_utterances_and_counts_them():
    tok, frontend, model = setup()
    # 1600 samples -> 11 frames -> 3 frames after 4x subsampling.
    batch = make_batch([
        ("ABC", 1600),        # needs 3: feasible
        ("AA", 1600),         # needs 3: feasible
        ("ABCD", 1600),       # needs 4: infeasible
        ("AAB", 1600),        # needs 4 (blank between the As): infeasible
        ("123 !!", 1600),     # empty after normalisation: nothing to learn
        ("HELLO WORLD", 16000),
    ])
    counters = Counters()
    loss, stats = compute_loss(model, frontend, batch, tok, CPU, False, counters)
    assert counters.infeasible == 3
    assert stats["ids"] == ["u0", "u1", "u5"]
    assert stats["utts"] == 3 and stats["tokens"] == 3 + 2 + 11
    assert torch.isfinite(loss)


def test_compute_loss_with_nothing_usable_returns_none():
    tok, frontend, model = setup()
    counters = Counters()
    assert compute_loss(model, frontend, make_batch([("A LONG SENTENCE", 800)]), tok, CPU, False, counters) is None
    assert counters.infeasible == 1


def test_a_batch_labelled_beforehand_gives_the_same_loss_and_counts():
    """The loader workers label batches (asr.targets.Labeler); compute_loss then uses their targets
    and counts what they left out, exactly as when it labels the batch itself."""
    tok, frontend, model = setup()
    model.eval()
    batch = make_batch([("ABC", 1600), ("ABCD", 1600), ("HELLO WORLD", 16000), ("123", 4000)])
    labelled = Labeler(tok, frontend.logmel.cfg, model.cfg.stride)(batch)
    assert labelled["ids"] == ["u0", "u2"] and labelled["wav"].shape == (2, 16000)
    assert labelled["targets"].tolist() == tok.encode("ABC") + tok.encode("HELLO WORLD")
    assert labelled["target_lengths"].tolist() == [3, 11]
    assert [(uid, kind) for uid, kind, _ in labelled["dropped"]] == [("u1", "infeasible"), ("u3", "infeasible")]
    here, there = Counters(), Counters()
    with torch.no_grad():
        a, sa = compute_loss(model, frontend, batch, tok, CPU, False, here)
        b, sb = compute_loss(model, frontend, labelled, tok, CPU, False, there)
    torch.testing.assert_close(a, b)
    assert sa == sb and here == there and here.infeasible == 2


def test_labeler_keeps_the_padding_to_a_multiple_when_it_drops_the_longest():
    """With train.pad_to_frames, a batch whose longest utterance is left out is trimmed to the kept
    longest padded to that multiple again, not to the kept longest itself."""
    from asr.data.shards import HOP, Sample, pad_batch

    tok, frontend, model = setup()
    samples = [Sample("u0", torch.ones(16000), "HELLO", None), Sample("u1", torch.ones(20000), "A" * 200, None)]
    batch = pad_batch(samples, pad_to=64)
    assert batch["wav"].shape[1] // HOP + 1 == 128  # 126 frames -> 128
    plain = Labeler(tok, frontend.logmel.cfg, model.cfg.stride)(batch)
    padded = Labeler(tok, frontend.logmel.cfg, model.cfg.stride, pad_to=64)(batch)
    assert [uid for uid, _, _ in padded["dropped"]] == ["u1"]
    assert plain["wav"].shape == (1, 16000)
    assert padded["wav"].shape == (1, 64 * 2 * HOP - 1) and padded["wav"].shape[1] // HOP + 1 == 128
    assert padded["wav"][0, :16000].eq(1).all() and padded["wav"][0, 16000:].eq(0).all()


@pytest.mark.parametrize("layout", ["padded", "packed", "split"])
def test_the_forward_pass_reads_nothing_back_from_the_device(monkeypatch, layout):
    """On a GPU every value read back (``.item()``, ``.cpu()``, a blocking copy) stalls the host until
    the queued work is done, and the GPU then idles while the host launches the next kernels. On the
    meta device any such read fails (blocking host-to-device copies are not caught: the step makes
    them through features.to_device), so the whole training forward pass (features, SpecAugment,
    subsampling, each LSTM layout) runs there; the CTC loss, which has no meta kernel,
    is checked to get its lengths on the host."""
    meta = torch.device("meta")
    real_autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda device_type, *a, **k: contextlib.nullcontext()
                        if device_type == "meta" else real_autocast(device_type, *a, **k))
    seen = {}

    def ctc_loss(log_probs, targets, input_lengths, target_lengths, **kwargs):
        seen.update(inputs=input_lengths, targets=target_lengths, log_probs=log_probs)
        return log_probs.sum()

    monkeypatch.setattr(F, "ctc_loss", ctc_loss)
    tok = CharTokenizer()
    frontend = FeatureExtractor(FeatureConfig(n_mels=20), SpecAugConfig()).to(meta).train()
    model = AcousticModel(ModelConfig(hidden=16, layers=2, dropout=0.1, lstm_layout=layout), 20,
                          tok.vocab_size).to(meta).train()
    batch = make_batch([("HELLO", 8000), ("AB BA", 6400), ("ABCD", 800)])  # the last one is infeasible
    batch["means"] = torch.zeros(3, 20)
    loss, stats = compute_loss(model, frontend, batch, tok, meta, False, Counters())
    assert loss.device == meta and stats["ids"] == ["u0", "u1"]
    assert seen["inputs"].device == CPU and seen["targets"].device == CPU
    assert seen["inputs"].tolist() == [(8000 // HOP + 1 + 3) // 4, (6400 // HOP + 1 + 3) // 4]
    assert seen["log_probs"].shape[:2] == (seen["inputs"].max(), 2)
    loss.backward()  # and the backward pass of everything before the loss


def test_lr_factor_warms_up_then_decays_to_the_final_fraction():
    warm, total, final = 10, 110, 0.05
    f = [lr_factor(s, warm, total, final) for s in range(0, 200)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:9], f[1:10])), "linear warm-up"
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])), "decay never goes up"
    assert f[60] == pytest.approx(final + (1 - final) * 0.5)
    assert f[110] == pytest.approx(final) and f[199] == pytest.approx(final)
    assert lr_factor(0, 0, 100, 0.1) == pytest.approx(1.0)


def test_lr_factor_paced_by_time_decays_by_whichever_budget_runs_out_first():
    warm, total, final = 10, 1000, 0.05
    # half the time used at step 20 of 1000: the decay is halfway, not 1% along
    assert lr_factor(20, warm, total, final, time_frac=0.5) == pytest.approx(final + (1 - final) * 0.5)
    assert lr_factor(20, warm, total, final, time_frac=1.5) == pytest.approx(final)
    # time behind the steps: the step count decides
    assert lr_factor(510, warm, total, final, time_frac=0.1) == pytest.approx(lr_factor(510, warm, total, final))
    assert lr_factor(5, warm, total, final, time_frac=0.9) == pytest.approx(0.6), "warm-up is by steps"


# --- the whole loop: train() from shards, and resume equality -------------------------------------------

def tiny_experiment(**train):
    from asr.config import load_config

    overrides = ["features.n_mels=20", "model.subsample_channels=4", "model.hidden=16", "model.layers=2",
                 "model.dropout=0.2", "train.max_frames=120", "train.max_batch=4", "train.num_workers=0",
                 "train.warmup_steps=2", "train.cmvn_utts=0", "train.shuffle_buffer=4", "train.num_buckets=2",
                 "train.bf16=false", "train.threads=1", "train.log_every=1"]
    return load_config(None, overrides + [f"train.{k}={v}" for k, v in train.items()])


def final_weights(exp) -> dict:
    state = torch.load(exp / "ckpt" / "state.pt", weights_only=False)
    return state["model"]


def test_resume_gives_the_same_model_as_an_uninterrupted_run(train_shards, tmp_path, monkeypatch):
    """Train 2 epochs straight, keeping a copy of every checkpoint; then resume from a mid-epoch and
    from an end-of-epoch checkpoint: the final weights are identical (data position, RNG, optimizer
    and schedule all restored)."""
    import shutil

    import asr.train as T

    stash: dict[tuple[int, int], object] = {}
    real_save = T.save_checkpoint

    def save_and_keep(path, *args, **kwargs):
        real_save(path, *args, **kwargs)
        epoch, batch = args[6], args[7]
        copy = tmp_path / f"state-{epoch}-{batch}.pt"
        shutil.copy(path, copy)
        stash[(epoch, batch)] = copy

    monkeypatch.setattr(T, "save_checkpoint", save_and_keep)
    cfg = tiny_experiment(epochs=2, save_every_steps=2)
    straight = T.train(cfg, train_shards, [], tmp_path / "straight", device="cpu")
    monkeypatch.setattr(T, "save_checkpoint", real_save)
    assert straight["epochs"] == 2 and straight["steps"] >= 6
    mid = [k for k in stash if k[0] == 0 and k[1] > 0]
    assert mid and (1, 0) in stash, sorted(stash)
    expected = final_weights(tmp_path / "straight")
    for key in (min(mid), (1, 0)):
        exp = tmp_path / f"resumed-{key[0]}-{key[1]}"
        (exp / "ckpt").mkdir(parents=True)
        shutil.copy(stash[key], exp / "ckpt" / "state.pt")
        summary = T.train(cfg, train_shards, [], exp, device="cpu", resume=True)
        assert summary["steps"] == straight["steps"], key
        got = final_weights(exp)
        for name, w in expected.items():
            assert torch.equal(got[name], w), f"resumed from {key}: {name} differs"


def test_adam_beta2_reaches_the_optimizer(train_shards, tmp_path):
    import asr.train as T

    T.train(tiny_experiment(epochs=1, adam_beta2=0.98), train_shards, [], tmp_path / "exp", device="cpu")
    state = torch.load(tmp_path / "exp" / "ckpt" / "state.pt", weights_only=False)
    assert tuple(state["optimizer"]["param_groups"][0]["betas"]) == (0.9, 0.98)


def test_pad_to_frames_reaches_the_batches(train_shards, tmp_path):
    """train.pad_to_frames: every logged step's batch is padded to a multiple of it (the step log's
    padding fraction then exceeds the plain run's), and training still runs."""
    import json

    import asr.train as T

    runs = {}
    for pad in (1, 64):
        exp = tmp_path / f"pad{pad}"
        T.train(tiny_experiment(epochs=1, pad_to_frames=pad), train_shards, [], exp, device="cpu")
        runs[pad] = [json.loads(line) for line in (exp / "train_log.jsonl").read_text().splitlines()]
        runs[pad] = [r for r in runs[pad] if "padding" in r]
    assert runs[1] and runs[64] and all(math.isfinite(r["loss"]) for r in runs[64])
    # 0.30-0.45 s utterances are 31-46 frames: padded to 64, at least 28% of every batch is padding.
    assert all(r["padding"] >= 0.28 for r in runs[64])
    assert sum(r["padding"] for r in runs[64]) / len(runs[64]) > sum(r["padding"] for r in runs[1]) / len(runs[1])
