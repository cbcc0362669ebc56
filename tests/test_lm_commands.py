"""`asr lm build` and `asr lm tune` through the command line, on tiny inputs."""
from __future__ import annotations

import json
import random

import pytest
import torch

from asr.cli import main
from asr.decode.emissions import load_emissions, save_emissions, synthetic_emissions
from asr.lm import read_arpa
from asr.text import CharTokenizer
from tests.conftest import write_audio

WORDS = ["CAT", "CAR", "CART", "DOG", "DOT", "THE", "A", "TO", "GO", "OF"]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(n)]


def test_build_normalises_text_and_leaves_out_excluded_sentences(tmp_path, capsys):
    (tmp_path / "text.txt").write_text("The cat, the DOG!\nthe cat sat\n\n  \nA dog sat.\n")
    (tmp_path / "dev.jsonl").write_text(json.dumps({"id": "d", "audio": "x.wav", "text": "A DOG SAT", "duration": 1}) + "\n")
    out = tmp_path / "lm" / "lm.arpa"
    assert main(["lm", "build", str(tmp_path / "text.txt"), "-o", str(out), "--order", "2",
                 "--exclude", str(tmp_path / "dev.jsonl")]) == 0
    msg = capsys.readouterr().out
    assert "2-gram" in msg and "1 lines of --exclude text left out" in msg
    lm = read_arpa(out)
    assert lm.order == 2
    assert sorted(lm.words()) == ["CAT", "DOG", "SAT", "THE"]  # upper case, no punctuation, no "A"
    assert lm.logprob10(["THE"], "CAT") > lm.logprob10(["THE"], "SAT")


def test_build_errors_are_one_line(tmp_path, capsys):
    assert main(["lm", "build", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "lm.arpa")]) == 2
    assert "asr lm build: error:" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("!!\n\n")
    assert main(["lm", "build", str(tmp_path / "empty.txt"), "-o", str(tmp_path / "lm.arpa")]) == 2
    assert "no text to train on" in capsys.readouterr().err
    assert not (tmp_path / "lm.arpa").exists()


def test_tune_on_saved_emissions_finds_a_pair_that_beats_no_lm(tmp_path, capsys):
    tok = CharTokenizer()
    text = sentences(400)
    (tmp_path / "text.txt").write_text("\n".join(text[40:]) + "\n")
    assert main(["lm", "build", str(tmp_path / "text.txt"), "-o", str(tmp_path / "lm.arpa"), "--order", "3"]) == 0
    em = synthetic_emissions(tok, text[:20], noise=1.2, confuse=0.2, seed=3)
    save_emissions(tmp_path / "dev.pt", em.ids, em.log_probs, em.refs, em.tokenizer_state, em.audio_seconds, 0.04)
    out = tmp_path / "best.json"
    assert main(["lm", "tune", "--emissions", str(tmp_path / "dev.pt"), "--lm", str(tmp_path / "lm.arpa"),
                 "--alphas", "0,1", "--betas", "0,1.5", "--beam-size", "6", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| alpha \\ beta | 0 | 1.5 |" in printed and "best: alpha" in printed
    res = json.loads(out.read_text())
    assert len(res["grid"]) == 4 and res["num_utts"] == 20
    assert {(g["alpha"], g["beta"]) for g in res["grid"]} == {(0.0, 0.0), (0.0, 1.5), (1.0, 0.0), (1.0, 1.5)}
    assert res["wer"] == min(g["wer"] for g in res["grid"])
    assert res["wer"] < res["no_lm_wer"] <= res["greedy_wer"] + 1e-9
    assert res["alpha"] == 1.0
    # the batched decoder gives the same grid
    out2 = tmp_path / "best-gpu.json"
    assert main(["lm", "tune", "--emissions", str(tmp_path / "dev.pt"), "--lm", str(tmp_path / "lm.arpa"),
                 "--alphas", "0,1", "--betas", "0,1.5", "--beam-size", "6", "--decoder", "beam-gpu",
                 "--device", "cpu", "-o", str(out2)]) == 0
    assert json.loads(out2.read_text())["grid"] == res["grid"]


def test_tune_runs_the_model_once_and_caches_its_emissions(tmp_path, tiny_model_cfg, capsys, monkeypatch):
    from asr.config import FeatureConfig
    from asr.model import AcousticModel
    from asr.package import save_package

    torch.manual_seed(0)
    tok = CharTokenizer()
    save_package(tmp_path / "m.pt", AcousticModel(tiny_model_cfg, 80, tok.vocab_size), FeatureConfig(),
                 torch.full((80,), -5.0), torch.full((80,), 3.0), tok)
    lines = []
    for i, text in enumerate(["THE CAT", "A DOG"]):
        write_audio(tmp_path / f"{i}.wav", 0.5 + 0.2 * i, seed=i)
        lines.append(json.dumps({"id": f"u{i}", "audio": f"{i}.wav", "text": text, "duration": 0.5 + 0.2 * i}))
    (tmp_path / "dev.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "text.txt").write_text("THE CAT\nA DOG\nTHE DOG\n")
    assert main(["lm", "build", str(tmp_path / "text.txt"), "-o", str(tmp_path / "lm.arpa"), "--order", "2"]) == 0
    args = ["lm", "tune", "--model", str(tmp_path / "m.pt"), "--manifest", str(tmp_path / "dev.jsonl"),
            "--lm", str(tmp_path / "lm.arpa"), "--emissions", str(tmp_path / "dev.emissions.pt"),
            "--alphas", "0.5", "--betas", "0,1", "--beam-size", "4", "--device", "cpu"]
    assert main(args) == 0
    em = load_emissions(tmp_path / "dev.emissions.pt")
    assert em.ids == ["u0", "u1"] and em.refs == ["THE CAT", "A DOG"] and em.frame_shift_s == pytest.approx(0.04)
    assert json.loads((tmp_path / "lm.tune.json").read_text())["num_utts"] == 2  # default output beside the LM

    import asr.lm.tune

    def no_model(*a, **k):
        raise AssertionError("the model ran again although its emissions are cached")

    monkeypatch.setattr(asr.lm.tune, "compute_emissions", no_model)
    assert main(args) == 0
    capsys.readouterr()
    # without a cache or a model there is nothing to tune on
    assert main(["lm", "tune", "--lm", str(tmp_path / "lm.arpa"), "--emissions", str(tmp_path / "none.pt")]) == 2
    assert "give --model and --manifest" in capsys.readouterr().err
