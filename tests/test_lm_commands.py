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


def _package(path, cfg, seed: int = 0) -> None:
    from asr.config import FeatureConfig
    from asr.model import AcousticModel
    from asr.package import save_package

    torch.manual_seed(seed)
    tok = CharTokenizer()
    save_package(path, AcousticModel(cfg, 80, tok.vocab_size), FeatureConfig(), torch.full((80,), -5.0),
                 torch.full((80,), 3.0), tok)


def _manifest(path, prefix: str, texts: list[str], extra: list[str] = ()) -> None:
    """A manifest of ``texts`` read aloud by test tones, ids ``<prefix><i>``, then the raw ``extra`` lines."""
    lines = []
    for i, text in enumerate(texts):
        write_audio(path.parent / f"{prefix}{i}.wav", 0.5 + 0.1 * i, seed=i)
        lines.append(json.dumps({"id": f"{prefix}{i}", "audio": f"{prefix}{i}.wav", "text": text,
                                 "duration": 0.5 + 0.1 * i}))
    path.write_text("\n".join(lines + list(extra)) + "\n")


def _tune(tmp_path, manifest: str | None, model: str | None = "m.pt", out: str = "t.json") -> list[str]:
    args = ["lm", "tune", "--lm", str(tmp_path / "lm.arpa"), "--emissions", str(tmp_path / "em.pt"),
            "--alphas", "0.5", "--betas", "0", "--beam-size", "2", "--device", "cpu", "-o", str(tmp_path / out)]
    args += ["--model", str(tmp_path / model)] if model else []
    return args + (["--manifest", str(tmp_path / manifest)] if manifest else [])


def test_tune_recomputes_a_cache_of_another_manifest_or_model(tmp_path, tiny_model_cfg, capsys, caplog):
    import hashlib
    import os

    def model_sha256(path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    _package(tmp_path / "m.pt", tiny_model_cfg)
    _manifest(tmp_path / "dev.jsonl", "d", ["THE CAT", "A DOG"])
    _manifest(tmp_path / "test.jsonl", "t", ["THE DOG", "A CAT", "THE CAT"])
    (tmp_path / "text.txt").write_text("THE CAT\nA DOG\nTHE DOG\n")
    assert main(["lm", "build", str(tmp_path / "text.txt"), "-o", str(tmp_path / "lm.arpa"), "--order", "2"]) == 0
    assert main(_tune(tmp_path, "dev.jsonl")) == 0
    em = load_emissions(tmp_path / "em.pt")
    assert em.ids == ["d0", "d1"]
    # the dev cache is not used for the test manifest: computed again, and the result names the right manifest
    caplog.clear()
    assert main(_tune(tmp_path, "test.jsonl")) == 0
    assert "are not the manifest's" in caplog.text and "computing the emissions again" in caplog.text
    assert load_emissions(tmp_path / "em.pt").ids == ["t0", "t1", "t2"]
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["num_utts"] == 3 and res["manifest"].endswith("test.jsonl")
    # without --model a cache that does not fit is an error, not a silent tune on other utterances
    assert main(_tune(tmp_path, "dev.jsonl", model=None)) == 2
    assert "does not fit" in capsys.readouterr().err
    # another model, although older than the cache (copied with its times kept), is noticed by its digest
    _package(tmp_path / "m2.pt", tiny_model_cfg, seed=1)
    cache_time = (tmp_path / "em.pt").stat().st_mtime
    os.utime(tmp_path / "m2.pt", (cache_time - 60, cache_time - 60))
    caplog.clear()
    assert main(_tune(tmp_path, "test.jsonl", model="m2.pt")) == 0
    assert "computed with another model" in caplog.text
    em2 = load_emissions(tmp_path / "em.pt")
    assert em2.model_sha256 == model_sha256(tmp_path / "m2.pt") and em2.model.endswith("m2.pt")
    assert not torch.equal(em2.log_probs[0], em.log_probs[0])
    assert model_sha256(tmp_path / "m.pt") != em2.model_sha256


def test_tune_lists_what_it_skipped_and_exits_3_also_from_its_cache(tmp_path, tiny_model_cfg, capsys, monkeypatch):
    _package(tmp_path / "m.pt", tiny_model_cfg)
    (tmp_path / "text.wav").write_text("not audio\n")
    bad_audio = json.dumps({"id": "bad", "audio": "text.wav", "text": "A CAT", "duration": 0.5})
    _manifest(tmp_path / "dev.jsonl", "d", ["THE CAT", "A DOG"], ['{"id": "torn', bad_audio])
    (tmp_path / "text.txt").write_text("THE CAT\nA DOG\nTHE DOG\n")
    assert main(["lm", "build", str(tmp_path / "text.txt"), "-o", str(tmp_path / "lm.arpa"), "--order", "2"]) == 0
    capsys.readouterr()
    assert main(_tune(tmp_path, "dev.jsonl")) == 3
    out, err = capsys.readouterr()
    assert "WER (%) on 2 utterances" in out
    lines = err[err.index("2 utterances skipped:"):].splitlines()
    assert "dev.jsonl:3: malformed JSON" in lines[1] and "text.wav: cannot decode audio" in lines[2]
    em = load_emissions(tmp_path / "em.pt")
    assert em.ids == ["d0", "d1"] and em.skipped_ids == ["bad"] and len(em.problems) == 1
    # from the cache: the same summary, without running the model
    import asr.lm.tune

    monkeypatch.setattr(asr.lm.tune, "compute_emissions", lambda *a, **k: pytest.fail("cache not used"))
    assert main(_tune(tmp_path, "dev.jsonl")) == 3
    assert "2 utterances skipped:" in capsys.readouterr().err


def test_tune_counts_the_words_of_normalised_references(tmp_path):
    from asr.lm.tune import grid_search
    from asr.metrics import score

    tok = CharTokenizer()
    (tmp_path / "text.txt").write_text("THE CAT\nA DOG\n")
    assert main(["lm", "build", str(tmp_path / "text.txt"), "-o", str(tmp_path / "lm.arpa"), "--order", "2"]) == 0
    em = synthetic_emissions(tok, ["THE CAT", "A DOG"], seed=1)
    em.refs = ["The cat -", "a dog !"]  # "-" and "!" are no words once normalised
    res = grid_search(em, tmp_path / "lm.arpa", [0.5], [0.0], beam_size=2, progress=False)
    assert res.num_words == 4 == score(em.refs, em.refs).num_words


def test_old_emissions_files_still_load(tmp_path):
    em = synthetic_emissions(CharTokenizer(), ["A CAT"])
    save_emissions(tmp_path / "e.pt", em.ids, em.log_probs, em.refs, em.tokenizer_state, em.audio_seconds, 0.04)
    data = torch.load(tmp_path / "e.pt", weights_only=True)
    for key in ("model", "model_sha256", "skipped_ids", "problems"):  # as written before these were recorded
        data.pop(key, None)
    torch.save(data, tmp_path / "e.pt")
    old = load_emissions(tmp_path / "e.pt")
    assert old.ids == em.ids and old.model is None and old.model_sha256 is None and old.skipped_ids == []
