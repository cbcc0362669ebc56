"""``asr shard --shuffle SEED``: a sorted manifest becomes shards in a reproducible random order.

Training streams shards in order through a bounded shuffle buffer, so shards written in the order of
a manifest sorted by speaker (LibriSpeech) or by label (FSDD) give batches of one speaker or one word.
"""
from __future__ import annotations

from pathlib import Path

from asr.cli import main
from asr.data.manifest import Utterance, write_manifest
from tests.conftest import write_audio


def shard_ids(folder: Path) -> list[str]:
    from asr.data.shards import resolve_shards, shard_metadata

    return [m["id"] for m in shard_metadata(resolve_shards(str(folder / "train.index.json")))]


def test_shard_shuffle_mixes_a_sorted_manifest_reproducibly(tmp_path):
    utts = []
    for i in range(40):
        write_audio(tmp_path / "a" / f"u{i:02d}.flac", 0.1, seed=i, subtype="PCM_16")
        utts.append(Utterance(f"u{i:02d}", str(tmp_path / "a" / f"u{i:02d}.flac"), "ONE", 0.1))
    write_manifest(tmp_path / "train.jsonl", utts)
    for name, extra in [("plain", []), ("s1", ["--shuffle", "1"]), ("s1b", ["--shuffle", "1"]), ("s2", ["--shuffle", "2"])]:
        assert main(["shard", str(tmp_path / "train.jsonl"), "-o", str(tmp_path / name), "--split", "train",
                     "--max-per-shard", "16", *extra]) == 0
    ids = [u.id for u in utts]
    assert shard_ids(tmp_path / "plain") == ids
    assert shard_ids(tmp_path / "s1") == shard_ids(tmp_path / "s1b") != ids
    assert shard_ids(tmp_path / "s2") != shard_ids(tmp_path / "s1")
    assert sorted(shard_ids(tmp_path / "s1")) == ids
