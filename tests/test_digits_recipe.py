"""recipes/digits/run.sh end to end on a tiny FSDD-layout folder.

The clips are tones, not speech, and the model is tiny: this checks that the stages fit together,
that the split is speaker-disjoint and that results.json holds the documented fields, not that the
model learns (benchmarks/RESULTS.md has the measured WER on the real FSDD).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

from tests.test_fsdd import make_fsdd

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.hidden=16", "model.layers=1", "model.subsample_channels=4", "train.max_frames=4000",
        "train.num_workers=0", "train.cmvn_utts=20", "train.warmup_steps=2", "train.threads=1", "train.log_every=1"]


def shard_ids(folder: Path) -> list[str]:
    from asr.data.shards import resolve_shards, shard_metadata

    return [m["id"] for m in shard_metadata(resolve_shards(str(folder / "train.index.json")))]


def test_recipe_runs_every_stage_and_keeps_the_test_speaker_out(tmp_path):
    make_fsdd(tmp_path / "fsdd")  # speakers anna, bert, carl, dora; 2 clips per digit each
    data, exp = tmp_path / "data", tmp_path / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = ["bash", str(REPO / "recipes" / "digits" / "run.sh"), str(tmp_path / "fsdd"), "--test-speaker", "dora",
           "--dev-speaker", "carl", "--num-connected", "6", "--num-eval-connected", "3", "--speeds", "0.9 1.0",
           "--epochs", "1", "--adapt-rounds", "1", "--synth", "0", "--noise-prob", "0", "--jobs", "1", "--data", str(data), "--exp", str(exp), "--", *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "test speaker dora: isolated WER" in proc.stdout

    res = json.loads((exp / "results.json").read_text())
    for key in ("wer", "cer", "num_utts", "num_words", "decoder", "audio_seconds", "decode_seconds",
                "wer_isolated", "wer_connected"):
        assert key in res, key
    assert res["test_speakers"] == ["dora"] and res["dev_speakers"] == ["carl"]
    assert sorted(res["train_speakers"]) == ["anna", "bert"]
    assert res["isolated"]["num_utts"] == 20 and res["connected"]["num_utts"] == 3
    assert res["num_utts"] == 23 and res["num_words"] == 20 + res["connected"]["num_words"]
    # a tiny model trained for seconds may insert more words than the references hold (WER > 1)
    assert math.isfinite(res["wer_isolated"]) and res["wer_isolated"] >= 0
    assert math.isfinite(res["wer_connected"]) and res["wer_connected"] >= 0
    # stage 5: beam search with an LM of the training transcripts, tuned on the dev speaker
    assert math.isfinite(res["wer_isolated_beam_lm"]) and math.isfinite(res["wer_connected_beam_lm"])
    assert "[beam search + digit LM]" in proc.stdout
    assert (exp / "lm" / "tune.json").is_file()
    # stage 6: the model adapted to the test speaker without its texts, scored with stage 5's decoder
    assert math.isfinite(res["wer_isolated_adapted"]) and math.isfinite(res["wer_connected_adapted"])
    assert "after unsupervised adaptation to the speaker" in proc.stdout
    adapted = [json.loads(x) for x in (exp / "adapted" / "model.log.jsonl").read_text().splitlines()]
    assert [r["round"] for r in adapted] == [1] and adapted[0]["target_utts"] == 23
    # labelled clips of the training speakers (2 x 26) and of the dev speaker (23), who has chosen by now
    assert adapted[0]["source_utts"] == 52 + 23

    # training saw the two training speakers only, at both speeds, in shuffled shards
    train_ids = shard_ids(data / "shards")
    assert train_ids != sorted(train_ids)
    assert {i.split("-")[1] for i in train_ids} == {"anna", "bert"}
    assert len(train_ids) == 2 * (2 * 20 + 2 * 6)  # (isolated + connected) x 2 speeds


def _recipe(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(["bash", str(REPO / "recipes" / "digits" / "run.sh"), *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_help_and_bad_options_do_no_work(tmp_path):
    where = ["--data", str(tmp_path / "d"), "--exp", str(tmp_path / "e")]
    for flag in ("--help", "-h"):
        proc = _recipe(flag)
        assert proc.returncode == 0 and proc.stdout.startswith("Connected digits"), proc.stderr
        assert "--data DIR" in proc.stdout and "--exp DIR" in proc.stdout and "--train-minutes" in proc.stdout
    for args, msg in [(["--stage", "abc"], "--stage must be a whole number >= 0, not 'abc'"),
                      (["--stop-stage", "-1"], "--stop-stage must be a whole number >= 0, not '-1'"),
                      (["--stop-stage"], "option --stop-stage needs a value"), (["--bogus"], "unknown option --bogus")]:
        proc = _recipe(str(tmp_path / "fsdd"), *where, *args)
        assert proc.returncode == 2 and msg in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert "==" not in proc.stdout, "no stage ran"
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_another_data_folder_reruns_the_stages(tmp_path):
    make_fsdd(tmp_path / "fsdd", per_digit=1)
    args = [str(tmp_path / "fsdd"), "--test-speaker", "dora", "--dev-speaker", "carl", "--num-connected", "2",
            "--num-eval-connected", "1", "--stop-stage", "0", "--exp", str(tmp_path / "e")]
    runs = []
    for data in ("a", "a", "b"):
        runs.append(_recipe(*args, "--data", str(tmp_path / data)))
        assert runs[-1].returncode == 0, runs[-1].stdout[-2000:] + runs[-1].stderr[-2000:]
    assert "done before with the same options" in runs[1].stdout
    assert "done before" not in runs[2].stdout, "stage 0 of --data b is not stage 0 of --data a"
    assert (tmp_path / "b" / "train.jsonl").is_file()
