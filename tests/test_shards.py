"""asr.data.shards: write -> stream round trip, rank/worker splits, frame-budget batches, corrupt shards."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from asr.audio import load_audio
from asr.data.manifest import Utterance
from asr.data.shards import (HOP, Sample, ShardBatches, bucket_batches, bucket_edges, pad_batch, padded_frames,
                             resolve_shards, shard_metadata, write_shards)
from tests.conftest import int16_roundtrip, write_audio

NUM = 14
DURATIONS = [0.12, 0.95, 0.33, 0.5, 0.21, 0.77, 0.4, 0.15, 0.6, 0.28, 0.88, 0.36, 0.18, 0.52]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """14 utterances: 16 kHz FLAC (copied into shards as is), plus one 8 kHz stereo WAV (converted)."""
    root = tmp_path_factory.mktemp("shards")
    utts, expected = [], {}
    for i, sec in enumerate(DURATIONS):
        uid = f"spk{i % 3}-ch-{i:04d}"
        if i == 5:
            path = root / "audio" / f"{uid}.wav"
            write_audio(path, sec, rate=8000, channels=2, seed=i, subtype="PCM_16")
            audio = int16_roundtrip(load_audio(path).numpy())
        else:
            path = root / "audio" / f"{uid}.flac"
            audio = int16_roundtrip(write_audio(path, sec, seed=i, subtype="PCM_16"))
        if i == 7:
            uid = "id.with.dots"  # webdataset keys cannot hold dots; the id must survive anyway
        utts.append(Utterance(uid, str(path), f"TEXT NUMBER {i}", sec, f"spk{i % 3}"))
        expected[uid] = (audio, f"TEXT NUMBER {i}")
    problems: list[str] = []
    shards = write_shards(utts, root / "out", "train", max_per_shard=4, problems=problems, progress=False)
    assert problems == []
    return root, utts, [str(s) for s in shards], expected


def collect(batches, pad_to: int = 1) -> list[tuple[str, np.ndarray, str]]:
    out = []
    for b in batches:
        frames = int(b["lengths"].max()) // HOP + 1
        assert b["wav"].shape == (len(b["ids"]), int(b["lengths"].max()) if pad_to == 1
                                  else -(-frames // pad_to) * pad_to * HOP - 1)
        assert b["wav"].dtype == torch.int16  # 16-bit PCM: half the bytes of float32
        for i, uid in enumerate(b["ids"]):
            n = int(b["lengths"][i])
            assert torch.count_nonzero(b["wav"][i, n:]) == 0
            out.append((uid, (b["wav"][i, :n].float() / 32768).numpy(), b["texts"][i]))
    return out


def test_write_shards_files_and_index(corpus):
    root, utts, shards, _ = corpus
    assert [Path(s).name for s in shards] == [f"train-{i:06d}.tar" for i in range(4)]
    index = json.loads((root / "out" / "train.index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [4, 4, 4, 2]
    assert index["num_utts"] == NUM
    assert index["hours"] == pytest.approx(sum(DURATIONS) / 3600, abs=1e-4)
    assert resolve_shards(str(root / "out" / "train.index.json")) == shards
    assert resolve_shards(str(root / "out" / "train-00000{0..3}.tar")) == shards
    meta = list(shard_metadata(shards))
    assert sorted(m["id"] for m in meta) == sorted(u.id for u in utts)
    assert all(m["audio"] == f"{m['id']}.flac" for m in meta)


def test_round_trip_returns_every_sample_once_with_its_audio_and_text(corpus):
    _, _, shards, expected = corpus
    ds = ShardBatches(shards, max_frames=300, max_batch=8, num_buckets=3, max_duration=2.0, shuffle_buffer=5, seed=3)
    got = collect(ds)
    assert Counter(uid for uid, _, _ in got) == Counter(expected.keys())
    for uid, wav, text in got:
        audio, ref_text = expected[uid]
        assert text == ref_text
        assert wav.shape == audio.shape
        np.testing.assert_array_equal(wav, audio)  # FLAC at 16 bits is lossless


def test_wav_shards_hold_the_same_samples_as_flac_shards(corpus, tmp_path):
    """--audio-format wav: the same utterances, batches and 16-bit samples as the FLAC shards, the
    audio stored as 16 kHz mono PCM WAV (a FLAC source is converted, a WAV source in that form copied)."""
    import tarfile
    _, utts, flac_shards, expected = corpus
    wav_shards = [str(p) for p in write_shards(utts, tmp_path, "train", max_per_shard=4, progress=False,
                                               audio_format="wav")]
    members = [m for s in wav_shards for m in tarfile.open(s).getnames()]
    assert sum(m.endswith(".wav") for m in members) == NUM and not any(m.endswith(".flac") for m in members)
    assert all(m["audio"] == f"{m['id']}.wav" for m in shard_metadata(wav_shards))
    kw = dict(max_frames=300, max_batch=8, num_buckets=3, max_duration=2.0, shuffle_buffer=5, seed=3)
    got_flac, got_wav = collect(ShardBatches(flac_shards, **kw)), collect(ShardBatches(wav_shards, **kw))
    assert [(u, t) for u, _, t in got_wav] == [(u, t) for u, _, t in got_flac]
    for (_, a, _), (uid, b, _) in zip(got_flac, got_wav):
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(b, expected[uid][0])
    with pytest.raises(ValueError, match="audio_format='mp3'"):
        write_shards(utts, tmp_path / "x", "train", audio_format="mp3")


def test_every_epoch_covers_the_data_in_a_new_order(corpus):
    _, _, shards, expected = corpus
    ds = ShardBatches(shards, max_frames=300, max_batch=8, num_buckets=3, max_duration=2.0, shuffle_buffer=5, seed=3)
    orders = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        ids = [uid for uid, _, _ in collect(ds)]
        assert sorted(ids) == sorted(expected)
        orders.append(ids)
    assert len({tuple(o) for o in orders}) > 1
    ds.set_epoch(1)
    assert [uid for uid, _, _ in collect(ds)] == orders[1], "an epoch's order is reproducible"


@pytest.mark.parametrize("shuffle", [True, False])
def test_two_ranks_are_disjoint_and_cover_everything(corpus, shuffle):
    _, _, shards, expected = corpus
    seen = []
    for rank in range(2):
        ds = ShardBatches(shards, max_frames=300, max_batch=8, num_buckets=3, max_duration=2.0, seed=5,
                          rank=rank, world=2, shuffle=shuffle)
        ds.set_epoch(2)
        seen.append([uid for uid, _, _ in collect(ds)])
    assert seen[0] and seen[1]
    assert not set(seen[0]) & set(seen[1])
    assert Counter(seen[0] + seen[1]) == Counter(expected.keys())


def test_dataloader_workers_read_no_sample_twice(corpus):
    _, _, shards, expected = corpus
    ds = ShardBatches(shards, max_frames=300, max_batch=8, num_buckets=3, max_duration=2.0, seed=1)
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    ids = [uid for uid, _, _ in collect(loader)]
    assert Counter(ids) == Counter(expected.keys())


def test_ranks_times_workers_read_no_sample_twice(corpus):
    _, _, shards, expected = corpus
    ids = []
    for rank in range(2):
        ds = ShardBatches(shards, max_frames=300, max_batch=8, num_buckets=3, max_duration=2.0, seed=1,
                          rank=rank, world=2)
        ids += [uid for uid, _, _ in collect(DataLoader(ds, batch_size=None, num_workers=2))]
    assert Counter(ids) == Counter(expected.keys())


def test_batches_respect_max_frames(corpus):
    _, _, shards, _ = corpus
    for max_frames, max_batch in ((150, 16), (250, 16), (400, 3)):
        ds = ShardBatches(shards, max_frames=max_frames, max_batch=max_batch, num_buckets=2, max_duration=2.0, seed=0)
        n = 0
        for b in ds:
            frames = b["lengths"] // HOP + 1
            size = len(b["ids"])
            n += size
            assert size <= max_batch
            assert size == 1 or size * int(frames.max()) <= max_frames, (max_frames, b["lengths"].tolist())
        assert n == NUM


def test_skip_batches_resumes_where_the_epoch_stopped(corpus):
    _, _, shards, _ = corpus
    ds = ShardBatches(shards, max_frames=150, max_batch=4, num_buckets=2, max_duration=2.0, shuffle_buffer=4, seed=9)
    ds.set_epoch(4)
    full = [tuple(b["ids"]) for b in ds]
    assert len(full) >= 5
    ds.set_epoch(4, skip_batches=3)
    assert [tuple(b["ids"]) for b in ds] == full[3:]


def test_skip_batches_with_two_workers_skips_exactly_the_consumed_batches(corpus):
    _, _, shards, _ = corpus
    ds = ShardBatches(shards, max_frames=150, max_batch=3, num_buckets=2, max_duration=2.0, shuffle_buffer=4, seed=9)
    ds.set_epoch(1)
    full = [tuple(b["ids"]) for b in DataLoader(ds, batch_size=None, num_workers=2)]
    for skip in (2, 3):
        ds.set_epoch(1, skip_batches=skip)
        rest = [tuple(b["ids"]) for b in DataLoader(ds, batch_size=None, num_workers=2)]
        assert Counter(rest) == Counter(full[skip:]), skip


def test_utterances_over_max_duration_are_left_out(corpus):
    _, _, shards, _ = corpus
    ds = ShardBatches(shards, max_frames=1000, max_batch=16, max_duration=0.5, seed=0)
    ids = [uid for uid, _, _ in collect(ds)]
    assert len(ids) == sum(d <= 0.5 for d in DURATIONS)


def test_corrupt_shard_is_skipped_without_crashing(corpus, tmp_path):
    _, _, shards, expected = corpus
    torn = tmp_path / "train-000009.tar"
    data = Path(shards[1]).read_bytes()
    torn.write_bytes(data[: len(data) // 2])  # a truncated copy of shard 1
    junk = tmp_path / "train-000010.tar"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    readable = [shards[0], shards[2], shards[3]]
    for loader_workers in (0, 2):
        ds = ShardBatches(readable + [str(torn), str(junk)], max_frames=300, max_batch=8, max_duration=2.0, seed=0,
                          shuffle=False)
        batches = DataLoader(ds, batch_size=None, num_workers=loader_workers) if loader_workers else ds
        got = collect(batches)
        ids = Counter(uid for uid, _, _ in got)
        intact = Counter(m["id"] for m in shard_metadata(readable))
        assert all(ids[k] == 1 for k in intact), "every sample of the intact shards, once"
        # Whatever survives of the torn shard is real, complete data.
        for uid, wav, text in got:
            np.testing.assert_array_equal(wav, expected[uid][0])


def _sample(uid: str, frames: int) -> Sample:
    return Sample(uid, torch.ones((frames - 1) * HOP), "X", None)


def test_bucket_batches_frame_budget_and_single_long_utterance():
    frames = [10, 50, 500, 12, 45, 30, 11, 60, 9, 48]
    samples = [_sample(f"u{i}", f) for i, f in enumerate(frames)]
    batches = list(bucket_batches(iter(samples), max_frames=100, max_batch=4, boundaries=[0.2, 1.0]))
    assert sorted(s.id for b in batches for s in b) == sorted(s.id for s in samples)
    for b in batches:
        longest = max(s.wav.shape[0] // HOP + 1 for s in b)
        assert len(b) <= 4
        assert len(b) == 1 or len(b) * longest <= 100
    assert [s.id for s in next(b for b in batches if any(s.id == "u2" for s in b))] == ["u2"]
    # Utterances of one batch come from one duration bucket.
    for b in batches:
        buckets = {sum((s.wav.shape[0] // HOP + 1) * HOP / 16000 >= e for e in (0.2, 1.0)) for s in b}
        assert len(buckets) == 1


def test_bucket_edges_are_geometric():
    edges = bucket_edges(16.0, 4, min_duration=1.0)
    assert edges == pytest.approx([2.0, 4.0, 8.0])
    assert bucket_edges(30.0, 1) == []


def test_pad_batch():
    b = pad_batch([Sample("a", torch.ones(3), "A", None), Sample("b", torch.full((5,), 2.0), "B", "s")])
    assert b["ids"] == ["a", "b"] and b["texts"] == ["A", "B"] and b["lengths"].tolist() == [3, 5]
    assert b["wav"].tolist() == [[1, 1, 1, 0, 0], [2, 2, 2, 2, 2]]


def test_pad_batch_to_a_multiple_of_frames():
    samples = [Sample("a", torch.ones(3 * HOP + 7), "A", None), Sample("b", torch.ones(HOP), "B", None)]
    b = pad_batch(samples, pad_to=8)  # the longest: 3 * HOP + 7 samples, 4 frames -> 8 frames
    assert b["lengths"].tolist() == [3 * HOP + 7, HOP]
    assert b["wav"].shape == (2, 8 * HOP - 1) and b["wav"].shape[1] // HOP + 1 == 8
    assert b["wav"][0, : 3 * HOP + 7].eq(1).all() and b["wav"][0, 3 * HOP + 7 :].eq(0).all()
    for n in range(1, 3 * HOP):  # every length: frames a multiple of pad_to, never shorter than the longest
        wav = pad_batch([Sample("a", torch.ones(n), "A", None)], pad_to=4)["wav"]
        assert wav.shape[1] >= n and (wav.shape[1] // HOP + 1) % 4 == 0 and wav.shape[1] // HOP + 1 < n // HOP + 5
    assert pad_batch(samples, pad_to=1)["wav"].shape == (2, 3 * HOP + 7)
    assert [padded_frames(f, 16) for f in (1, 16, 17, 32)] == [16, 16, 32, 32]


def test_bucket_batches_budget_counts_the_padding_to_a_multiple():
    frames = [10, 50, 12, 45, 30, 11, 60, 9, 48, 33, 21, 17]
    samples = [_sample(f"u{i}", f) for i, f in enumerate(frames)]
    batches = list(bucket_batches(iter(samples), max_frames=128, max_batch=8, boundaries=[0.2], pad_to=16))
    assert sorted(s.id for b in batches for s in b) == sorted(s.id for s in samples)
    for b in batches:
        assert len(b) * padded_frames(max(s.wav.shape[0] // HOP + 1 for s in b), 16) <= 128
    # Unpadded, the short ones make one batch of six that padding to 16 frames would take past the budget.
    plain = list(bucket_batches(iter(samples), max_frames=128, max_batch=8, boundaries=[0.2]))
    assert max(len(b) * padded_frames(max(s.wav.shape[0] // HOP + 1 for s in b), 16) for b in plain) > 128


def test_batches_padded_to_a_multiple_come_in_fewer_shapes(corpus):
    _, _, shards, expected = corpus
    kw = dict(max_frames=300, max_batch=8, num_buckets=3, max_duration=2.0, shuffle_buffer=5, seed=3)
    plain, padded = list(ShardBatches(shards, **kw)), list(ShardBatches(shards, **kw, pad_to=32))
    assert len({b["wav"].shape[1] for b in padded}) < len({b["wav"].shape[1] for b in plain})
    assert all((b["wav"].shape[1] // HOP + 1) % 32 == 0 for b in padded)
    assert all(len(b["ids"]) * (b["wav"].shape[1] // HOP + 1) <= 300 or len(b["ids"]) == 1 for b in padded)
    got = collect(padded, pad_to=32)  # the same audio, zeros after each length
    assert Counter(uid for uid, _, _ in got) == Counter(expected.keys())
    for uid, wav, _ in got:
        np.testing.assert_array_equal(wav, expected[uid][0])


def test_bucket_leftovers_are_packed_together_not_one_small_batch_per_bucket():
    # One utterance in each of ten buckets: ten one-utterance batches before, now one batch.
    samples = [_sample(f"u{i}", f) for i, f in enumerate([5, 9, 15, 25, 40, 70, 110, 180, 300, 400])]
    edges = bucket_edges(5.0, 10, min_duration=0.05)
    assert len({sum(s.wav.shape[0] / 16000 >= e for e in edges) for s in samples}) == 10
    batches = list(bucket_batches(iter(samples), max_frames=4000, max_batch=16, boundaries=edges))
    assert [[s.id for s in b] for b in batches] == [[f"u{i}" for i in range(10)]]  # sorted by length
    # The frame budget still holds for the packed leftovers.
    batches = list(bucket_batches(iter(samples), max_frames=800, max_batch=16, boundaries=edges))
    assert sorted(s.id for b in batches for s in b) == sorted(s.id for s in samples)
    assert all(len(b) * max(s.wav.shape[0] // HOP + 1 for s in b) <= 800 for b in batches)
    assert len(batches) == 3  # [u0..u6] (7 x 111), [u7, u8] (2 x 301), [u9]


def test_pad_batch_int16_is_lossless_for_16_bit_audio():
    pcm = torch.tensor([0, 1, -1, 32767, -32768, 1234], dtype=torch.int16)
    b = pad_batch([Sample("a", pcm.float() / 32768, "A", None), Sample("b", pcm[:2].float() / 32768, "B", None)],
                  int16=True)
    assert b["wav"].dtype == torch.int16
    assert b["wav"][0].tolist() == pcm.tolist() and b["wav"][1].tolist() == [0, 1, 0, 0, 0, 0]


def test_shuffled_is_a_permutation_and_starts_after_initial_items():
    import random as _random
    from asr.data.shards import shuffled
    for bufsize, initial in [(1, None), (5, None), (50, None), (50, 10), (1000, 200), (7, 100)]:
        out = list(shuffled(iter(range(300)), bufsize, _random.Random(0), initial))
        assert sorted(out) == list(range(300))
        if bufsize > 1:
            assert out != list(range(300))
    consumed = []

    def source():
        for i in range(10_000):
            consumed.append(i)
            yield i

    stream = shuffled(source(), 5000, _random.Random(1), initial=200)
    next(stream)
    assert len(consumed) <= 201  # not the whole 5,000-item buffer
    rest = list(stream)
    assert len(rest) == 9_999


def test_first_batch_has_its_own_smaller_frame_budget():
    samples = [_sample(f"u{i}", 50) for i in range(40)]
    batches = list(bucket_batches(iter(samples), max_frames=1000, max_batch=100, boundaries=[], first_max_frames=200))
    assert [len(b) for b in batches] == [4, 20, 16]
    assert [s.id for b in batches for s in b] == [s.id for s in samples]
    assert [len(b) for b in bucket_batches(iter(samples), 1000, 100, [])] == [20, 20]


def test_ids_that_would_share_a_shard_key_are_reported_not_written(corpus, tmp_path):
    """"a.b" and "a_b" both become the key "a_b": a tar holding both cannot be read at all."""
    from dataclasses import replace

    _, utts, _, _ = corpus
    clash = [replace(utts[0], id="spk-a.b"), replace(utts[1], id="spk-a_b"), utts[2]]
    problems: list[str] = []
    paths = write_shards(clash, tmp_path, "train", problems=problems, progress=False)
    assert problems == ["spk-a_b: its shard key 'spk-a_b' is taken by 'spk-a.b'; rename one of them"]
    assert json.loads((tmp_path / "train.index.json").read_text())["num_utts"] == 2
    assert sorted(m["id"] for m in shard_metadata([str(p) for p in paths])) == sorted(["spk-a.b", utts[2].id])


def test_write_shards_removes_only_its_own_splits_stale_shards(corpus, tmp_path):
    _, utts, _, _ = corpus
    write_shards(utts[:3], tmp_path, "train-clean", progress=False)
    (tmp_path / "train-000007.tar").write_bytes(b"stale")  # left by an earlier, larger run of this split
    (tmp_path / "train-notes.tar").write_bytes(b"not a shard")
    shards = write_shards(utts[:3], tmp_path, "train", progress=False)
    assert [p.name for p in shards] == ["train-000000.tar"]
    names = sorted(p.name for p in tmp_path.glob("*.tar"))
    assert names == ["train-000000.tar", "train-clean-000000.tar", "train-notes.tar"]


def test_resolve_shards_names_missing_shards_of_an_index_or_a_brace_pattern(corpus, tmp_path):
    root, _, shards, _ = corpus
    index = json.loads((root / "out" / "train.index.json").read_text())
    index["shards"].append({"path": "train-000009.tar"})
    (tmp_path / "train.index.json").write_text(json.dumps(index))
    for s in shards:
        (tmp_path / Path(s).name).write_bytes(Path(s).read_bytes())
    with pytest.raises(FileNotFoundError, match=r"train\.index\.json: 1 of 5 shards missing: \S*train-000009\.tar$"):
        resolve_shards(str(tmp_path / "train.index.json"))
    with pytest.raises(FileNotFoundError, match=r"2 of 6 shards missing: \S*train-000004\.tar, \S*train-000005\.tar$"):
        resolve_shards(str(tmp_path / "train-{000000..000005}.tar"))
    with pytest.raises(FileNotFoundError, match=r"10 of 11 shards missing: \S*train-000004\.tar, \S*train-000005\.tar, "
                                                r"\S*train-000006\.tar, \.\.\.$"):  # the first few, and a count
        resolve_shards(str(tmp_path / "train-0000{03..13}.tar"))
    with pytest.raises(FileNotFoundError, match="nope-000000.tar: no such shard file"):
        resolve_shards(str(tmp_path / "nope-000000.tar"))


def test_resolve_shards_leaves_remote_urls_unchecked():
    assert resolve_shards("pipe:cat /nowhere/train-{0..1}.tar") == ["pipe:cat /nowhere/train-0.tar",
                                                                    "pipe:cat /nowhere/train-1.tar"]
    assert resolve_shards(["https://example.org/a-000000.tar?sig=x", "s3://bucket/b-000000.tar"]) == [
        "https://example.org/a-000000.tar?sig=x", "s3://bucket/b-000000.tar"]


def test_resolve_shards_globs_absolute_and_relative_patterns_sorted(corpus, monkeypatch):
    root, _, shards, _ = corpus
    assert resolve_shards(str(root / "out" / "train-*.tar")) == shards
    monkeypatch.chdir(root)
    assert resolve_shards("out/train-00000[0-3].tar") == [str(Path("out") / Path(s).name) for s in shards]
    with pytest.raises(FileNotFoundError, match=r"out/dev-\*\.tar: no shards match"):
        resolve_shards("out/dev-*.tar")
    with pytest.raises(FileNotFoundError, match="no shards match"):
        resolve_shards(str(root / "out" / "dev-*.tar"))


def test_pad_batch_takes_int16_and_float_samples_alike():
    """The training stream's samples are int16, evaluation's float32: either pads to the same batch."""
    from asr.audio import to_pcm16
    f = [torch.tensor([0.5, -0.25, 0.0]), torch.tensor([1.0 - 2**-15, -1.0])]
    mixed = [Sample("a", f[0], "A", None), Sample("b", to_pcm16(f[1]), "B", None)]
    floats = [Sample("a", f[0], "A", None), Sample("b", f[1], "B", None)]
    for int16 in (True, False):
        got, want = pad_batch(mixed, int16=int16), pad_batch(floats, int16=int16)
        assert got["wav"].dtype == (torch.int16 if int16 else torch.float32)
        assert torch.equal(got["wav"], want["wav"]) and torch.equal(got["lengths"], torch.tensor([3, 2]))
