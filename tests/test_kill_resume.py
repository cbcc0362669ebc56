"""``kill -9`` a real ``asr train`` process mid-epoch, ``--resume`` it, and get the same model.

The interrupted run is killed twice (once in the first epoch, once at an arbitrary moment of the
second, which may land inside a checkpoint write) and resumed each time; its final weights must be
bitwise those of an uninterrupted run with the same seed. Everything runs on the CPU, one thread.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from asr.package import read_checked

REPO = Path(__file__).resolve().parents[1]

# A tiny model and small batches, so an epoch of the 12 fixture utterances is several steps; a
# checkpoint after every step, so the kill always finds a recent one. Dropout and SpecAugment stay
# on: they draw from the RNG, which --resume must restore for the weights to match.
OVERRIDES = ["features.n_mels=20", "model.subsample_channels=4", "model.hidden=16", "model.layers=2",
             "model.dropout=0.2", "train.max_frames=120", "train.max_batch=4", "train.num_workers=1",
             "train.warmup_steps=2", "train.cmvn_utts=0", "train.shuffle_buffer=4", "train.num_buckets=2",
             "train.bf16=false", "train.threads=1", "train.log_every=1", "train.save_every_steps=1",
             "train.epochs=3", "train.seed=7"]

# A step of this model takes milliseconds; the child sleeps this long before each batch's loss
# (and nowhere else), so that a kill from outside reliably lands inside an epoch. The training
# code itself runs unchanged.
STEP_DELAY_S = 0.15
LAUNCH = ("import sys, time\n"
          "import asr.train as T\n"
          "real = T.compute_loss\n"
          "def slow(*a, **k):\n"
          f"    time.sleep({STEP_DELAY_S})\n"
          "    return real(*a, **k)\n"
          "T.compute_loss = slow\n"
          "from asr.cli import main\n"
          "sys.exit(main(sys.argv[1:]))\n")


def train_cmd(shards: list[str], exp: Path, resume: bool) -> list[str]:
    return [sys.executable, "-c", LAUNCH, "train", "--train", *shards, "--exp", str(exp), "--device", "cpu",
            *(["--resume"] if resume else []), *OVERRIDES]


def child_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def logged_steps(exp: Path) -> list[dict]:
    """Step records of train_log.jsonl (a line being written at the moment is ignored)."""
    path = exp / "train_log.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in rec:
            out.append(rec)
    return out


def run_until_killed(cmd: list[str], exp: Path, kill_at_step: int, jitter_s: float = 0.0,
                     timeout_s: float = 40.0) -> None:
    """Start ``cmd``; once train_log.jsonl shows step ``kill_at_step``, wait ``jitter_s`` and SIGKILL it."""
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not any(r["step"] >= kill_at_step for r in logged_steps(exp)):
            if proc.poll() is not None:
                pytest.fail(f"training ended (rc {proc.returncode}) before step {kill_at_step}:\n"
                            f"{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no step {kill_at_step} within {timeout_s} s")
            time.sleep(0.005)
        time.sleep(jitter_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def run_to_end(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def uninterrupted(train_shards, tmp_path_factory) -> tuple[dict, dict]:
    """(summary, final checkpoint) of the run never stopped."""
    exp = tmp_path_factory.mktemp("straight")
    return run_to_end(train_cmd(train_shards, exp, resume=False)), read_checked(exp / "ckpt" / "state.pt",
                                                                                 "training checkpoint")


def assert_same_training(got: dict, expected: dict) -> None:
    assert got["model"].keys() == expected["model"].keys()
    for name, w in expected["model"].items():
        assert torch.equal(got["model"][name], w), f"{name} differs after the stop and --resume"
    for a, b in zip(got["optimizer"]["state"].values(), expected["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    # The per-epoch records are those of the straight run (each epoch counted once, same losses).
    assert [(h["epoch"], h["step"], h["train_loss"]) for h in got["history"]] == \
           [(h["epoch"], h["step"], h["train_loss"]) for h in expected["history"]]


def test_kill_9_mid_epoch_then_resume_gives_the_uninterrupted_weights(train_shards, tmp_path, uninterrupted):
    straight, expected = uninterrupted
    steps_per_epoch = [r["step"] for r in expected["history"]]
    assert straight["epochs"] == 3 and steps_per_epoch[0] >= 4, steps_per_epoch

    exp = tmp_path / "killed"
    ckpt = exp / "ckpt" / "state.pt"
    # First kill: inside the first epoch, a couple of steps in.
    run_until_killed(train_cmd(train_shards, exp, resume=False), exp, kill_at_step=2)
    state = read_checked(ckpt, "training checkpoint")
    assert state["epoch"] == 0 and 0 < state["batch_in_epoch"] and 0 < state["step"] < steps_per_epoch[0], \
        "the first kill should land mid-epoch"

    # Second kill: an arbitrary moment inside the second epoch (within one step's time after a log
    # line, which is also when the checkpoint of that step is being written).
    kill_at = steps_per_epoch[0] + 2
    run_until_killed(train_cmd(train_shards, exp, resume=True), exp, kill_at_step=kill_at,
                     jitter_s=random.Random(os.getpid()).uniform(0, STEP_DELAY_S))
    state = read_checked(ckpt, "training checkpoint")  # never torn: written atomically
    assert state["step"] >= kill_at - 1 and state["step"] < straight["steps"]

    resumed = run_to_end(train_cmd(train_shards, exp, resume=True))
    assert resumed["steps"] == straight["steps"] and resumed["epochs"] == 3
    assert_same_training(read_checked(ckpt, "training checkpoint"), expected)
    # Killed checkpoint writes leave no torn state.pt; stray temporary files are cleaned up on resume.
    assert sorted(p.name for p in (exp / "ckpt").iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_a_checkpoint_that_resumes_exactly(train_shards, tmp_path, uninterrupted, sig):
    """A preempted job (SIGTERM) or Ctrl-C: the step in progress finishes, a checkpoint is written
    (with no checkpoints between epochs), the process says so and exits 128 + the signal; --resume
    then ends with the uninterrupted run's weights, and the log holds each step once."""
    straight, expected = uninterrupted
    exp = tmp_path / "stopped"
    cmd = train_cmd(train_shards, exp, resume=False)
    cmd[cmd.index("train.save_every_steps=1")] = "train.save_every_steps=0"
    # Its own process group, signalled whole, as a terminal's Ctrl-C or a batch system's SIGTERM
    # reaches the loader worker too.
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 40
        while not any(r["step"] >= 2 for r in logged_steps(exp)):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no step 2 within 40 s"
            time.sleep(0.005)
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err[-3000:]
    assert f"{sig.name}: stopped after step" in err and "Traceback" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    state = read_checked(exp / "ckpt" / "state.pt", "training checkpoint")
    assert summary["interrupted"] == sig.name and summary["steps"] == state["step"] >= 2
    assert state["epoch"] == 0 and state["step"] < straight["steps"]

    resumed = run_to_end(train_cmd(train_shards, exp, resume=True))
    assert resumed["steps"] == straight["steps"] and "interrupted" not in resumed
    assert_same_training(read_checked(exp / "ckpt" / "state.pt", "training checkpoint"), expected)
    steps = [r["step"] for r in logged_steps(exp)]
    assert steps == list(range(1, straight["steps"] + 1)), "each step logged once"
