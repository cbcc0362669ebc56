"""recipes/mini/run.sh (README command 1) end to end with a tiny corpus and a tiny model.

Checks that the stages fit together, that training runs as two torchrun processes, that the test
voices never train, that synthesized audio is trimmed of its silent ends, and that the greedy and
beam + LM results are written and printed. The WER itself is measured in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.conftest import have_espeak

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.hidden=16", "model.layers=1", "train.num_workers=0", "train.cmvn_utts=10", "train.warmup_steps=2",
        "train.log_every=1"]


def test_recipe_runs_every_stage_with_two_training_processes(tmp_path):
    assert have_espeak(), "espeak-ng is needed for the mini recipe (apt-get install espeak-ng)"
    data, exp = tmp_path / "data", tmp_path / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = ["bash", str(REPO / "recipes" / "mini" / "run.sh"), "--num-train", "30", "--num-dev", "6", "--num-test", "6",
           "--epochs", "1", "--train-minutes", "1", "--beam-size", "2", "--jobs", "2", "--train-procs", "2",
           "--data", str(data), "--exp", str(exp), "--", *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "WER" in out and "[greedy]" in out and "[beam-lm]" in out

    res = json.loads((exp / "results.json").read_text())
    assert res["decoder"] == "greedy" and res["num_utts"] == 6 and 0 <= res["wer"] <= 2
    beam = json.loads((exp / "decode" / "test-beam-lm" / "results.json").read_text())
    assert beam["num_utts"] == 6 and beam["decoder"] == "beam"

    # two training processes: the world size is in the log, and one writer (rank 0) wrote it
    assert "world 2" in proc.stderr
    epochs = [json.loads(line) for line in (exp / "train_log.jsonl").read_text().splitlines() if "train_loss" in line]
    assert [e["epoch"] for e in epochs] == [1]

    # test speakers are not training speakers
    def speakers(split: str) -> set[str]:
        return {json.loads(line)["speaker"] for line in (data / f"{split}.jsonl").read_text().splitlines()}

    assert speakers("test") and not speakers("test") & speakers("train")

    # synthesized audio keeps at most ~0.1 s of silence at each end, and some at the end (espeak-ng's
    # library leaves out the pause the program ends a sentence with; synth puts it back)
    for line in (data / "train.jsonl").read_text().splitlines()[:5]:
        wav, sr = sf.read(json.loads(line)["audio"])
        frames = np.lib.stride_tricks.sliding_window_view(wav, 400)[::160]
        db = 10 * np.log10((frames**2).mean(axis=1) + 1e-12)
        loud = np.nonzero(db > db.max() - 40)[0]
        lead, tail = loud[0] * 0.01, (len(db) - 1 - loud[-1]) * 0.01
        assert lead <= 0.15 and 0.04 <= tail <= 0.15, f"{line}: {lead:.2f} s / {tail:.2f} s of silence at the ends"


def _recipe(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(["bash", str(REPO / "recipes" / "mini" / "run.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_help_and_bad_options_do_no_work(tmp_path):
    where = ["--data", str(tmp_path / "d"), "--exp", str(tmp_path / "e")]
    for flag in ("--help", "-h"):
        proc = _recipe(flag)
        assert proc.returncode == 0 and "--stop-stage" in proc.stdout and "--data DIR" in proc.stdout, proc.stderr
        assert "--exp DIR" in proc.stdout and proc.stdout.startswith("The embedded default")
    for args, msg in [(["--stage", "abc"], "--stage must be a whole number >= 0, not 'abc'"),
                      (["--stop-stage", "1x"], "--stop-stage must be a whole number >= 0, not '1x'"),
                      (["--stage"], "option --stage needs a value"), (["--bogus"], "unknown option --bogus")]:
        proc = _recipe(*where, *args)
        assert proc.returncode == 2 and msg in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert "==" not in proc.stdout, "no stage ran"
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_another_data_folder_reruns_the_stages(tmp_path):
    assert have_espeak(), "espeak-ng is needed for the mini recipe (apt-get install espeak-ng)"
    small = ["--num-train", "2", "--num-dev", "1", "--num-test", "1", "--train-voices", "1", "--jobs", "1",
             "--stop-stage", "0", "--exp", str(tmp_path / "e")]
    runs = []
    for data in ("a", "a", "b"):
        runs.append(_recipe(*small, "--data", str(tmp_path / data)))
        assert runs[-1].returncode == 0, runs[-1].stdout[-2000:] + runs[-1].stderr[-2000:]
    assert "done before with the same options" in runs[1].stdout
    assert "done before" not in runs[2].stdout, "stage 0 of --data b is not stage 0 of --data a"
    assert (tmp_path / "b" / "corpus" / "train").is_dir()
