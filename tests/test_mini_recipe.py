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
