"""The benchmark scripts run end to end on tiny inputs and print well-formed tables.

They are measured by hand (benchmarks/RESULTS.md); here they only have to work, so that a number in
RESULTS.md can always be reproduced with the script as it is.
"""
from __future__ import annotations

import importlib.util
import itertools
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def run_script(*args: str, timeout: int = 240) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def table_rows(out: str) -> list[list[str]]:
    """Markdown table body rows (header and separator dropped) as lists of cells."""
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def test_train_throughput_reports_ours_beside_the_bare_lstm(train_shards):
    out = run_script("benchmarks/train_throughput.py", "--shards", *train_shards, "--sizes", "1x16", "2x24",
                     "--lstm-layouts", "padded", "split", "--steps", "3", "--warmup", "1", "--max-frames", "400",
                     "--workers", "0", "--threads", "1")
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["1x16 padded", "1x16 split", "2x24 padded", "2x24 split"]
    for r in rows:
        ours, bare, ratio = float(r[2]), float(r[3]), float(r[4].rstrip("%"))
        assert ours > 0 and bare > 0
        assert abs(ratio - 100 * ours / bare) <= 1.0
        assert 0.0 <= float(r[5].rstrip("%")) < 100.0  # padding fraction
        assert 0.0 <= float(r[6].rstrip("%")) <= 100.0  # data wait
        assert r[7:] == ["n/a", "n/a"]  # syncs and peak memory: GPU only


def test_lstm_step_times_each_layout():
    out = run_script("benchmarks/lstm_step.py", "--hidden", "8", "--layers", "2", "--batch", "3", "--seconds", "0.5",
                     "--repeats", "2", "--threads", "1", "--lstm-layouts", "padded", "packed", "split")
    rows = table_rows(out)
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("2x8", lay, "3", "50") for lay in ("padded", "packed", "split")]
    assert all(float(r[4]) > 0 for r in rows)


def test_label_cost_times_both_tokenizers(train_shards):
    out = run_script("benchmarks/label_cost.py", "--shards", *train_shards, "--utts", "5", "--join", "2",
                     "--repeats", "2")
    rows = table_rows(out)
    assert [(r[0], r[1]) for r in rows] == [("char", "5"), ("sentencepiece 256", "5")]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)


def test_decode_benchmark_table_on_synthetic_emissions(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(["THE CAT SAT ON THE MAT", "A DOG RAN IN THE PARK", "THE SUN IS HOT",
                               "WE SAW THE CAT", "THE DOG SAT"] * 4) + "\n")
    lm = tmp_path / "lm.arpa"
    subprocess.run([sys.executable, "-m", "asr", "lm", "build", str(text), "-o", str(lm), "--order", "2"],
                   cwd=REPO, check=True, capture_output=True)
    out = run_script("benchmarks/decode.py", "--synthetic", str(text), "--num-synthetic", "12", "--lm", str(lm),
                     "--decoders", "greedy,beam,beam-gpu", "--beam-size", "4", "--repeats", "1", "--device", "cpu")
    rows = {r[0]: r for r in table_rows(out)}
    assert any(k.startswith("greedy") for k in rows) and len(rows) == 3, out
    wers = {name: float(re.sub(r"[^0-9.]", "", r[1])) for name, r in rows.items()}
    assert all(w >= 0.0 for w in wers.values())  # (insertions can take WER past 100%)
    beam = [w for name, w in wers.items() if "beam" in name]
    assert len(beam) == 2 and abs(beam[0] - beam[1]) < 1e-9, "the CPU and batched searches agree"
    for r in rows.values():
        assert float(r[2].replace(",", "")) > 0  # audio seconds per second


def test_long_shards_joins_clips_into_utterances_with_their_transcripts(train_shards, tmp_path):
    from asr.data.shards import ShardBatches, resolve_shards
    out = run_script("benchmarks/long_shards.py", "--src", *train_shards, "--out", str(tmp_path / "long"),
                     "--hours", "0.01", "--per-shard", "3", "--jobs", "2")
    assert "utterances" in out
    src = {s.text: s.wav for s in ShardBatches(train_shards, 1, 1, shuffle=False).samples(train_shards)}
    shards = resolve_shards(str(tmp_path / "long" / "train.index.json"))
    longs = list(ShardBatches(shards, 1, 1, shuffle=False).samples(shards))
    total = sum(s.wav.shape[0] for s in longs) / 16000
    assert 36.0 <= total < 36.0 + 17.5  # the hours asked for, give or take the last utterance
    assert len(shards) == -(-len(longs) // 3)
    for s in longs:
        assert s.wav.shape[0] / 16000 <= 17.5
        # the transcript is the source clips' transcripts in order; the audio starts with the first
        # clip and holds every clip plus a 50-300 ms pause between neighbours
        parts, rest = [], s.text
        while rest:
            first = next(t for t in src if rest == t or rest.startswith(t + " "))
            parts.append(first)
            rest = rest[len(first) + 1:]
        n = src[parts[0]].shape[0]
        assert torch.allclose(s.wav[:n], src[parts[0]], atol=1 / 32768)
        clips = sum(src[p].shape[0] for p in parts)
        assert 0.05 * 16000 * (len(parts) - 1) <= s.wav.shape[0] - clips <= 0.3 * 16000 * (len(parts) - 1)


def test_first_batch_reports_when_each_batch_arrives(train_shards):
    out = run_script("benchmarks/first_batch.py", "--shards", *train_shards, "--max-frames", "400",
                     "--buckets", "2", "--shuffle-buffer", "20", "--batches", "3")
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["1", "2", "3"]
    times = [float(r[1]) for r in rows]
    assert times == sorted(times) and all(int(r[2]) >= 1 for r in rows)


def test_step_parts_builds_the_step_up_from_the_bare_lstm():
    out = run_script("benchmarks/step_parts.py", "--hidden", "8", "--layers", "2", "--batch", "3", "--seconds", "1",
                     "--repeats", "2", "--threads", "1", "--shapes", "both")
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["bare nn.LSTM, forward + backward",
                                    "the same, one layer a call (not exact for padding)",
                                    "our LSTM layers alone (padded)", "our LSTM layers alone (split)",
                                    "model (split), summed log-probs",  # the model's default layout
                                    "+ CTC loss, cuDNN's where it fits", "+ CTC loss, torch's (asr train's)",
                                    "+ features and SpecAugment", "+ gradient norm, read, optimizer",
                                    "+ batch from pinned host memory"]
    for col in (1, 3):  # fixed batch, fresh shapes: each against its own bare row
        ms = [float(r[col]) for r in rows]
        assert all(m > 0 for m in ms) and rows[0][col + 1] == "100%"
        for m, r in zip(ms, rows):  # the printed ms are rounded; at these sizes they are ~1 ms
            assert abs(float(r[col + 1].rstrip("%")) - 100 * ms[0] / m) <= 3.0


def load_benchmark(name: str):
    """A benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_parts_fresh_shapes_never_repeat_and_keep_the_audio():
    step_parts = load_benchmark("step_parts")
    shapes = list(itertools.islice(step_parts.fresh_shapes(295, 13.0), 300))
    samples = [(b, int(s * 16000)) for b, s in shapes]
    assert len(set(samples)) == 300 and (295, 13 * 16000) not in samples  # none is the fixed batch's
    assert all(7.8 <= s <= 13.0 for _, s in shapes)
    assert all(abs(b * s - 295 * 13.0) <= 13.0 for b, s in shapes)  # within one utterance of the fixed batch's audio


def test_train_throughput_preloaded_row_trains_on_the_same_batches(train_shards):
    out = run_script("benchmarks/train_throughput.py", "--shards", *train_shards, "--sizes", "1x16",
                     "--variants", "train", "preloaded", "cudnn-ctc", "no-prefetch", "reserved-cores",
                     "classic-alloc", "no-scaling", "all-threads", "--reserve-cores", "1", "--steps", "3",
                     "--warmup", "1",
                     "--max-frames", "400", "--workers", "1", "--threads", "1")
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["1x16 split", "1x16 split, preloaded", "1x16 split, cudnn-ctc",
                                    "1x16 split, no-prefetch", "1x16 split, reserved-cores",
                                    "1x16 split, classic-alloc", "1x16 split, no-scaling",
                                    "1x16 split, all-threads"]
    assert len({r[5] for r in rows}) == 1  # the same batches in every row: the same padding fraction
    assert float(rows[1][6].rstrip("%")) < 1.0  # nothing to wait for once the batches are in memory


def test_train_throughput_pad_to_row_pads_batches_more(train_shards):
    out = run_script("benchmarks/train_throughput.py", "--shards", *train_shards, "--sizes", "1x16",
                     "--variants", "train", "pad-to", "--pad-to", "64", "--steps", "6", "--warmup", "1",
                     "--max-frames", "400", "--workers", "0", "--threads", "1", "--repeat", "2")
    assert f"{len(train_shards)} shards x 2 a pass" in out
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["1x16 split", "1x16 split, pad-to"]
    assert float(rows[1][5].rstrip("%")) > float(rows[0][5].rstrip("%"))  # more padding
    new = [int(m) for m in re.findall(r"in the 6 timed steps, (\d+) batches of a shape not seen before", out)]
    assert len(new) == 2 and 0 <= new[1] <= new[0] <= 6  # (fewer shapes: tests/test_shards.py)


def test_train_throughput_counts_the_allocators_driver_calls(monkeypatch):
    tt = load_benchmark("train_throughput")
    assert tt.allocator_events(torch.device("cpu")) == {}
    device_stats = {"num_device_alloc": 7, "num_device_free": 1, "num_alloc_retries": 0, "allocated.all.current": 99}
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device=None: dict(device_stats))
    monkeypatch.setattr(torch.cuda, "host_memory_stats", lambda: {"num_host_alloc": 3, "num_host_free": 2})
    before = tt.allocator_events(torch.device("cuda"))
    assert before == {"num_device_alloc": 7, "num_device_free": 1, "num_alloc_retries": 0,
                      "host:num_host_alloc": 3, "host:num_host_free": 2}
    device_stats["num_device_alloc"] = 12
    assert tt.allocator_events(torch.device("cuda")) - before == {"num_device_alloc": 5}


def test_batch_shapes_stand_ins_batch_exactly_as_the_real_loader(train_shards, monkeypatch):
    """LengthsOnly (lengths from the audio headers, no decoding) gives each loader worker the very
    batches ShardBatches gives it: the same utterances in the same order, padded to the same shape."""
    import asr.data.shards as S
    from types import SimpleNamespace

    bs = load_benchmark("batch_shapes")
    for pad in (1, 64):
        kw = dict(max_frames=300, max_batch=4, num_buckets=3, max_duration=2.0, shuffle_buffer=5, seed=3, pad_to=pad)
        for w in range(2):
            monkeypatch.setattr(S, "get_worker_info", lambda w=w: SimpleNamespace(id=w, num_workers=2))
            real = [(b["ids"], tuple(b["wav"].shape)) for b in S.ShardBatches(train_shards, **kw)]
            stand_in = [(b["ids"], tuple(b["wav"].shape)) for b in bs.LengthsOnly(train_shards, **kw)]
            assert real and stand_in == real


def test_batch_shapes_counts_the_audio_a_worker_holds(train_shards):
    """The decoded audio a worker holds just after handing a batch on: what it took from its
    shards less what it handed on, at most. Batches of one utterance: a batch goes out when the
    next utterance comes (so one utterance waits in the bucket), and the shuffle of batches holds up
    to 7 more."""
    bs = load_benchmark("batch_shapes")
    kw = dict(max_batch=1, num_buckets=1, max_duration=2.0, shuffle_buffer=5, seed=3)
    batches, held = bs.loader_batches(bs.LengthsOnly(train_shards, 10_000, **kw), workers=1, passes=1)
    longest = int(0.45 * 16000)  # the fixture's utterances: 0.3-0.45 s
    assert len(batches) == 12 and longest < held <= 8 * longest
    unshuffled = bs.LengthsOnly(train_shards, 10_000, **kw, shuffle=False)
    assert 0 < bs.loader_batches(unshuffled, workers=1, passes=1)[1] <= longest  # the next utterance only


def test_batch_shapes_reports_passes_padding_new_shapes_and_tails(train_shards):
    out = run_script("benchmarks/batch_shapes.py", "--shards", *train_shards, "--max-frames", "400", "--workers", "2",
                     "--repeat", "1", "3", "--pad-to", "1", "64", "--warmup", "1", "--steps", "3",
                     "--num-buckets", "3", "20")
    rows = table_rows(out)
    assert [(r[1], r[2], r[3]) for r in rows] == [(b, rep, pad) for b in ("3", "20") for rep in ("1", "3")
                                                  for pad in ("1", "64")]
    rows3 = {(r[2], r[3]): r for r in rows if r[1] == "3"}
    assert int(rows3[("3", "1")][4]) > int(rows3[("1", "1")][4])  # three times the utterances a pass: more batches,
    assert float(rows3[("3", "1")][10]) > float(rows3[("1", "1")][10])  # and fuller ones (fewer first batches and leftovers)
    for r in rows:
        padding, new, steps, tail = float(r[9].rstrip("%")), *map(int, r[11].split(" of ")), float(r[12].rstrip("%"))
        assert 0 <= padding < 100 and 1 <= new <= steps
        assert padding <= tail < 100  # the padding is all past the shortest utterance; the tail holds more
        assert 0 <= float(r[13]) < 12 * 0.45 * 16000 * 2 / 1e6  # decoded audio held (MB): less than all 12 utterances
    assert float(rows3[("1", "64")][9].rstrip("%")) > float(rows3[("1", "1")][9].rstrip("%"))  # padded to 64: more padding
    assert max(float(r[13]) for r in rows) > 0  # (a worker whose shards make one batch holds none after it)
    # the tail by hand: batch 1 (2 x 10 frames, shortest 6): 8 of 20 frames; batch 2 (3 x 4, all 4): none
    bs = load_benchmark("batch_shapes")
    got = bs.summary([(2, 10, 16, 6), (3, 4, 12, 4)], max_frames=20)
    assert got["tail"] == pytest.approx(8 / 32) and got["padding"] == pytest.approx(1 - 28 / 32)


def test_lstm_grad_range_shows_what_fp16_keeps_with_and_without_scaling(train_shards, tmp_path, tiny_model_cfg):
    from tests.test_transcribe import _tiny_package

    pkg = _tiny_package(tmp_path / "m.pt", tiny_model_cfg)
    out = run_script("benchmarks/lstm_grad_range.py", "--model", str(pkg), "--shards", *train_shards,
                     "--batches", "2", "--max-frames", "400", "--tokens", "1000", "--scale", "1024")
    rows = table_rows(out)
    assert [(r[0], r[1]) for r in rows] == [(rows[0][0], "1"), (rows[0][0], "1024"), ("1,000", "1"), ("1,000", "1024")]
    pct = [[float(c.rstrip("%")) for c in r[4:]] for r in rows]
    assert all(abs(sum(p) - 100) < 0.2 for p in pct)
    median = [float(r[2]) for r in rows]
    assert median[1] == pytest.approx(1024 * median[0], rel=0.01) and median[2] < median[0]  # more tokens: smaller
    assert pct[1][0] >= pct[0][0] and pct[3][0] >= pct[2][0]  # scaled: at least as much at full precision
    assert pct[3][2] <= pct[2][2]  # and no more turned to zero


def test_fp16_lstm_training_rounds_the_lstms_gradients_and_trains_each_way(train_shards):
    fp = load_benchmark("fp16_lstm_training")
    x = torch.tensor([1.0, 1e-6, 1e-9], requires_grad=True)
    fp.RoundGrad.apply(x).backward(torch.tensor([1.0, 1e-6, 1e-9]))
    assert x.grad[0] == 1.0 and x.grad[1] != 1e-6 and x.grad[1] == pytest.approx(1e-6, rel=0.05) and x.grad[2] == 0
    out = run_script("benchmarks/fp16_lstm_training.py", "--shards", *train_shards[1:], "--held-out", train_shards[0],
                     "--modes", "fp32", "boundary-scaled", "full", "--steps", "4", "--every", "2",
                     "features.n_mels=20", "model.hidden=16", "model.layers=2", "train.max_frames=120",
                     "train.max_batch=4", "train.warmup_steps=2", "train.num_buckets=2")
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["2", "4"]
    for r in rows:
        for cell in r[1:]:
            train, held = (float(v) for v in cell.split(" / "))
            assert math.isfinite(train) and math.isfinite(held)


def test_host_threads_times_the_check_on_idle_and_busy_cores():
    out = run_script("benchmarks/host_threads.py", "--utts", "8", "--tokens", "5", "--busy", "1", "--threads", "1", "2",
                     "--repeats", "5")
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(len(r) == 7 and all(float(ms) > 0 for ms in r[1:]) for r in rows)
    assert "targets of 8 utterances" in out
