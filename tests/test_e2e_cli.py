"""End to end through the `asr` command: synth -> prepare -> shard -> train -> evaluate -> transcribe -> resume.

A tiny corpus (espeak-ng voices), a tiny model and two epochs: this checks that the stages fit
together and that their outputs keep the documented contracts, not that the model learns.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import have_espeak

REPO = Path(__file__).resolve().parents[1]

SENTENCES = """\
The quick brown fox jumps over the lazy dog.
A stitch in time saves nine.
All that glitters is not gold.
The early bird catches the worm.
Actions speak louder than words.
Beauty is in the eye of the beholder.
Every cloud has a silver lining.
Fortune favours the bold and the brave.
When in doubt, tell the truth.
You cannot judge a book by its cover.
The pen is mightier than the sword.
Better late than never, they say.
Honesty is the best policy.
Look before you leap into the water.
Practice makes perfect in the end.
Time flies when you are having fun.
Two heads are better than one.
Where there is smoke, there is fire.
The grass is always greener on the other side.
Laughter is the best medicine of all.
Rome was not built in a day.
An apple a day keeps the doctor away.
Birds of a feather flock together.
Necessity is the mother of invention.
Old habits die hard in quiet towns.
The squeaky wheel gets the grease.
Still waters run deep beneath the bridge.
What goes up must come down again.
You can lead a horse to water.
Slow and steady wins the race.
The best things in life are free.
Absence makes the heart grow fonder.
"""

TRAIN_OVERRIDES = ["model.hidden=32", "model.layers=1", "model.subsample_channels=8", "train.epochs=2",
                   "train.max_frames=4000", "train.cmvn_utts=20", "train.num_workers=0", "train.warmup_steps=2",
                   "train.threads=1"]


def asr(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m asr ARGS`` on one thread, with this checkout first on the path."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "asr", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, f"asr {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    assert have_espeak(), "espeak-ng is needed for the end-to-end test (apt-get install espeak-ng)"
    work = tmp_path_factory.mktemp("e2e")
    (work / "text.txt").write_text(SENTENCES)
    asr("synth", "corpus", "--num-train", "24", "--num-dev", "4", "--num-test", "4", "--train-voices", "4",
        "--no-flite", "--text", "text.txt", "--jobs", "2", cwd=work)
    # The three preparations are independent stages: run them side by side.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-m", "asr", "prepare", f"corpus/{s}", "-o", f"data/{s}.jsonl"],
                              cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in ("train", "dev", "test")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        assert re.search(r"data/\w+\.jsonl: \d+ utterances", out), out
    counts = {s: len((work / "data" / f"{s}.jsonl").read_text().splitlines()) for s in ("train", "dev", "test")}
    assert counts == {"train": 24, "dev": 4, "test": 4}
    out = asr("shard", "data/train.jsonl", "-o", "shards", "--max-per-shard", "10", cwd=work).stdout
    assert "3 shards of train" in out
    index = json.loads((work / "shards" / "train.index.json").read_text())
    assert index["num_utts"] == 24
    proc = asr("train", "--train", "shards/train.index.json", "--dev", "data/dev.jsonl", "--exp", "exp",
               *TRAIN_OVERRIDES, cwd=work)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return work, summary


def test_synthetic_corpus_keeps_test_text_and_voices_unseen(trained):
    work, _ = trained
    texts = {s: {json.loads(l)["text"] for l in (work / "data" / f"{s}.jsonl").read_text().splitlines()}
             for s in ("train", "dev", "test")}
    assert not texts["test"] & (texts["train"] | texts["dev"])
    assert not texts["dev"] & texts["train"]
    speakers = {}
    for split in ("train", "test"):
        lines = (work / "corpus" / split / "SPEAKERS.TXT").read_text().splitlines()
        speakers[split] = {line.split("|")[1].strip().split("@")[0] for line in lines}
    assert len(speakers["train"]) == 4
    variant = {split: {v.split("+")[-1] for v in voices} for split, voices in speakers.items()}
    assert not variant["test"] & variant["train"], speakers
    # Durations in the manifest are the audio's; the audio is 16 kHz mono.
    for line in (work / "data" / "test.jsonl").read_text().splitlines():
        u = json.loads(line)
        info = sf.info(u["audio"])
        assert info.samplerate == 16000 and info.channels == 1
        assert u["duration"] == pytest.approx(info.frames / 16000, abs=1e-3)


def test_train_writes_model_checkpoints_and_logs(trained):
    work, summary = trained
    exp = work / "exp"
    assert summary["epochs"] == 2 and summary["steps"] > 0
    assert summary["nonfinite"] == 0
    for name in ("model.pt", "config.json", "train_log.jsonl", "train_summary.json", "ckpt/state.pt",
                 "ckpt/epoch-1.pt", "ckpt/epoch-2.pt"):
        assert (exp / name).is_file(), name
    config = json.loads((exp / "config.json").read_text())
    assert config["model"]["hidden"] == 32 and config["train"]["epochs"] == 2
    records = [json.loads(line) for line in (exp / "train_log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "train_loss" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all("dev_wer" in r for r in epochs)


def test_model_package_loads_and_runs(trained):
    import torch

    from asr.audio import load_audio
    from asr.package import load_package
    from asr.recognizer import Recognizer

    work, _ = trained
    pkg = load_package(work / "exp" / "model.pt")
    assert pkg.model.cfg.hidden == 32 and pkg.model.cfg.layers == 1
    assert pkg.tokenizer.kind == "char"
    assert pkg.cmvn_mean.shape == (pkg.features.n_mels,) and bool((pkg.cmvn_std > 0).all())
    wav = load_audio(next((work / "corpus" / "test").rglob("*.flac")))
    lp, n = Recognizer.from_package(pkg).log_probs(wav[None], torch.tensor([wav.shape[0]]))
    assert lp.shape[0] == 1 and lp.shape[2] == pkg.tokenizer.vocab_size and int(n[0]) == lp.shape[1]
    assert torch.isfinite(lp).all()


def test_evaluate_prints_wer_and_writes_results(trained):
    work, _ = trained
    proc = asr("evaluate", "exp/model.pt", "data/test.jsonl", "--out", "decode_test", "--threads", "1",
               "--workers", "0", cwd=work)
    assert re.search(r"WER \d+\.\d\d%", proc.stdout), proc.stdout
    results = json.loads((work / "decode_test" / "results.json").read_text())
    for key in ("wer", "cer", "num_utts", "num_words", "decoder", "audio_seconds", "decode_seconds"):
        assert key in results, key
    assert results["num_utts"] == 4 and results["decoder"] == "greedy"
    ref_words = sum(len(json.loads(l)["text"].split()) for l in (work / "data" / "test.jsonl").read_text().splitlines())
    assert results["num_words"] == ref_words
    assert results["audio_seconds"] > 0 and results["decode_seconds"] > 0
    printed = float(re.search(r"WER (\d+\.\d\d)%", proc.stdout).group(1))
    assert printed == pytest.approx(100 * results["wer"], abs=0.006)
    recogs = (work / "decode_test" / "recogs.txt").read_text().splitlines()
    assert len(recogs) == 4 and (work / "decode_test" / "errs.txt").is_file()


def test_transcribe_prints_one_line_matching_evaluate(trained):
    work, _ = trained
    manifest = [json.loads(l) for l in (work / "data" / "test.jsonl").read_text().splitlines()]
    utt = manifest[0]
    proc = asr("transcribe", "--model", "exp/model.pt", utt["audio"], "--threads", "1", cwd=work)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert re.fullmatch(r"[A-Z' ]*", lines[0]), lines[0]
    # The same model on the same audio, alone or in a padded evaluation batch, gives the same words.
    recogs = dict(line.split("\t", 1) if "\t" in line else (line, "")
                  for line in (work / "decode_test" / "recogs.txt").read_text().splitlines())
    assert recogs[utt["id"]] == lines[0]


def test_transcribe_unreadable_file_is_reported(trained):
    work, _ = trained
    (work / "junk.wav").write_bytes(b"not audio at all")
    proc = asr("transcribe", "--model", "exp/model.pt", "junk.wav", "--threads", "1", cwd=work, check=False)
    assert proc.returncode == 3
    assert "junk.wav" in proc.stderr


def test_train_resume_continues(trained):
    work, first = trained
    overrides = [o if not o.startswith("train.epochs=") else "train.epochs=3" for o in TRAIN_OVERRIDES]
    proc = asr("train", "--train", "shards/train.index.json", "--dev", "data/dev.jsonl", "--exp", "exp", "--resume",
               *overrides, cwd=work)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 3
    assert summary["steps"] > first["steps"]
    assert "resumed from" in proc.stderr
    records = [json.loads(line) for line in (work / "exp" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "train_loss" in r] == [1, 2, 3]
    assert (work / "exp" / "ckpt" / "epoch-3.pt").is_file()
