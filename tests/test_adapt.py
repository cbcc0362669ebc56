"""Unsupervised speaker adaptation (asr/adapt.py, ``asr adapt``): which pseudo-transcripts are chosen,
that training follows them and never the target's own texts, and the command on untranscribed audio."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from asr.adapt import AdaptConfig, adapt, decode_with_margins, most_confident, speed_views
from asr.cli import main
from asr.data.shards import Sample, pad_batch
from asr.decode.beam import BeamSearchDecoder
from asr.package import load_package
from asr.recognizer import Recognizer
from tests.conftest import signal, write_audio
from tests.test_transcribe import _tiny_package


def test_most_confident_takes_the_largest_margins():
    decoded = {"a": ("ONE", 5.0), "b": ("TWO", 1.0), "c": ("SIX", 3.0), "d": ("ONE TWO", 0.5),
               "e": ("", math.inf)}  # an empty hypothesis is never a transcript, however sure
    assert most_confident(decoded, 0.4) == ["a", "c"]
    assert sorted(most_confident(decoded, 1.0)) == list("abcd")
    assert most_confident(decoded, 0.0) == []
    # where the hypotheses of the speed-perturbed copies agree more, that comes before the margin
    assert most_confident(decoded, 0.4, {"a": 1, "b": 4, "c": 2, "d": 4}) == ["b", "d"]
    assert most_confident(decoded, 0.6, {"a": 1, "b": 4, "c": 2, "d": 4, "e": 4}) == ["b", "d", "c"]


def test_speed_views_hear_the_target_faster_and_slower(tmp_path, tiny_model_cfg):
    import dataclasses

    pkg = load_package(_tiny_package(tmp_path / "m.pt", tiny_model_cfg))
    pkg = dataclasses.replace(pkg, features=dataclasses.replace(pkg.features, utterance_cmn=True, speaker_cmn=True))
    rec = Recognizer.from_package(pkg)
    target = [Sample(f"t{i}", torch.from_numpy(signal(1.0, seed=i)), "", spk) for i, spk in enumerate(["a", "a", None])]
    views, means = speed_views(rec, target, (0.9, 1.0, 1.1))
    assert len(views) == 3 and views[0] is target  # 1.0 once, first
    assert [[s.id for s in v] for v in views] == [["t0", "t1", "t2"]] * 3
    assert views[1][0].wav.shape[0] == pytest.approx(target[0].wav.shape[0] / 0.9, abs=2)
    assert views[2][0].wav.shape[0] == pytest.approx(target[0].wav.shape[0] / 1.1, abs=2)
    assert [s.speaker for s in views[1]] == ["a@0.9", "a@0.9", None]  # no speaker: its own mean, as at 1.0
    assert set(means) == {"a", "a@0.9", "a@1.1"}
    assert not torch.allclose(means["a"], means["a@1.1"])  # a faster voice has its own mean


@pytest.fixture
def talkative(tmp_path, tiny_model_cfg):
    """A tiny random model whose blank is pushed down, so that it says something on any audio."""
    pkg_path = _tiny_package(tmp_path / "m.pt", tiny_model_cfg)
    rec = Recognizer.from_package(load_package(pkg_path))
    with torch.no_grad():
        rec.model.head.bias[0] -= 3.0
    target = [Sample(f"t{i}", torch.from_numpy(signal(0.6 + 0.1 * i, seed=i)), "IGNORED", "spk") for i in range(6)]
    source = [Sample(f"s{i}", torch.from_numpy(signal(0.7, seed=10 + i)), "AB", "other") for i in range(4)]
    return rec, target, source


def _ctc(rec: Recognizer, samples: list[Sample], texts: dict[str, str]) -> float:
    batch = pad_batch(samples)
    rec.model.eval()
    with torch.no_grad():
        feats, flen = rec.frontend(batch["wav"], batch["lengths"])
        lp, olen = rec.model(feats, flen)
    tg = [torch.tensor(rec.tokenizer.encode(texts[s.id])) for s in samples]
    return float(F.ctc_loss(lp.transpose(0, 1), torch.cat(tg), olen, torch.tensor([len(t) for t in tg]),
                            reduction="sum", zero_infinity=True))


def test_adapt_learns_its_own_confident_hypotheses(talkative, tmp_path):
    rec, target, source = talkative
    decoder = BeamSearchDecoder(rec.tokenizer, beam_size=4)
    first = decode_with_margins(rec, decoder, target, None)
    assert all(text for text, _ in first.values()), "the fixture model should say something"
    assert all(m >= 0 for _, m in first.values())
    chosen = [s for s in target if s.id in set(most_confident(first, 0.5))]
    labels = {s.id: first[s.id][0] for s in chosen}
    before = _ctc(rec, chosen, labels)
    records = adapt(rec, decoder, target, source, AdaptConfig(rounds=1, keep=0.5, keep_step=0.15, epochs=30, lr=1e-2,
                                                              source_utts=2), tmp_path / "log.jsonl")
    assert _ctc(rec, chosen, labels) < 0.7 * before
    assert records[0]["pseudo_labelled"] == len(chosen) == 3 and records[0]["source_utts"] == 2
    # the target texts are only scored (diagnostics), never learnt: "IGNORED" is no hypothesis
    assert records[0]["pseudo_label_wer"] == pytest.approx(1.0)
    assert [json.loads(x)["round"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [1]


def test_adapt_does_not_read_the_target_texts(talkative, tmp_path, tiny_model_cfg):
    rec, target, source = talkative
    relabelled = [Sample(s.id, s.wav, "SOMETHING ELSE ENTIRELY", s.speaker) for s in target]
    cfg = AdaptConfig(rounds=2, keep=0.5, keep_step=0.25, epochs=2, source_utts=2)
    rec2 = Recognizer.from_package(load_package(_tiny_package(tmp_path / "m2.pt", tiny_model_cfg)))
    with torch.no_grad():
        rec2.model.head.bias[0] -= 3.0
    records = adapt(rec, BeamSearchDecoder(rec.tokenizer, beam_size=4), target, source, cfg)
    assert [r["pseudo_labelled"] for r in records] == [3, 4], "the chosen share grows each round"
    adapt(rec2, BeamSearchDecoder(rec2.tokenizer, beam_size=4), relabelled, source, cfg)
    for (name, p), q in zip(rec.model.named_parameters(), rec2.model.parameters()):
        assert torch.equal(p, q), name


def test_cli_adapts_on_untranscribed_audio_and_skips_a_bad_file(tmp_path, tiny_model_cfg, capsys):
    pkg = _tiny_package(tmp_path / "m.pt", tiny_model_cfg)
    audio = tmp_path / "audio"
    for i in range(4):
        write_audio(audio / f"clip{i}.wav", 0.5 + 0.1 * i, seed=i)
    (audio / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")
    out = tmp_path / "adapted.pt"
    rc = main(["adapt", str(pkg), str(audio), "-o", str(out), "--rounds", "1", "--epochs", "1",
               "--keep", "1.0", "--device", "cpu", "--threads", "1"])
    assert rc == 3, "the broken file is skipped, and the exit status says so"
    err = capsys.readouterr().err
    assert "broken.wav" in err
    adapted = load_package(out)
    assert adapted.meta["adapted"]["target_utts"] == 4
    assert adapted.meta["adapted"]["config"]["rounds"] == 1
    assert (tmp_path / "adapted.log.jsonl").is_file()


def test_cli_takes_a_manifest_without_texts(tmp_path, tiny_model_cfg, capsys):
    """The target's texts are never used, so a manifest may leave them empty or out."""
    pkg = _tiny_package(tmp_path / "m.pt", tiny_model_cfg)
    lines = []
    for i in range(3):
        write_audio(tmp_path / f"c{i}.wav", 0.5, seed=i)
        line = {"id": f"c{i}", "audio": f"c{i}.wav", "duration": 0.5}
        lines.append(json.dumps(line if i else {**line, "text": ""}))
    (tmp_path / "target.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "adapted.pt"
    rc = main(["adapt", str(pkg), str(tmp_path / "target.jsonl"), "-o", str(out), "--rounds", "1", "--epochs", "1",
               "--keep", "1.0", "--device", "cpu", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    assert load_package(out).meta["adapted"]["target_utts"] == 3
    with pytest.raises(SystemExit):
        main(["adapt", str(pkg), str(tmp_path / "target.jsonl"), "-o", str(out), "--rounds", "0"])


def test_cli_says_when_no_audio_is_readable(tmp_path, tiny_model_cfg, capsys):
    pkg = _tiny_package(tmp_path / "m.pt", tiny_model_cfg)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")
    assert main(["adapt", str(pkg), str(tmp_path / "a"), "-o", str(tmp_path / "x.pt"), "--device", "cpu"]) == 2
    assert "no readable target audio" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_cli_mixes_in_labelled_clips_from_every_source_manifest(tmp_path, tiny_model_cfg, capsys):
    from asr.data.manifest import Utterance, write_manifest

    pkg = _tiny_package(tmp_path / "m.pt", tiny_model_cfg)
    for i in range(3):
        write_audio(tmp_path / "target" / f"clip{i}.wav", 0.5 + 0.1 * i, seed=i)
    manifests = []
    for name, n in (("train", 2), ("dev", 3)):  # e.g. the training speakers and the dev speaker
        utts = []
        for i in range(n):
            wav = tmp_path / name / f"{i}.wav"
            write_audio(wav, 0.6, seed=20 + 5 * len(manifests) + i)
            utts.append(Utterance(f"{name}{i}", str(wav), "AB", 0.6, name))
        write_manifest(tmp_path / f"{name}.jsonl", utts)
        manifests.append(str(tmp_path / f"{name}.jsonl"))
    (tmp_path / "dev" / "1.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")  # one bad labelled clip
    out = tmp_path / "adapted.pt"
    rc = main(["adapt", str(pkg), str(tmp_path / "target"), "-o", str(out), "--source", *manifests,
               "--rounds", "1", "--epochs", "1", "--keep", "1.0", "--speeds", "--device", "cpu", "--threads", "1"])
    assert rc == 3 and "1.wav" in capsys.readouterr().err
    # 2 + 3 labelled clips offered, the broken one reported and skipped
    assert load_package(out).meta["adapted"]["rounds"][0]["source_utts"] == 4


def test_cli_leaves_target_clips_out_of_the_labelled_ones(tmp_path, tiny_model_cfg, capsys):
    from asr.data.manifest import Utterance, write_manifest

    pkg = _tiny_package(tmp_path / "m.pt", tiny_model_cfg)
    clips = [tmp_path / "spk" / f"clip{i}.wav" for i in range(3)]
    for i, c in enumerate(clips):
        write_audio(c, 0.6, seed=i)
    # the labelled manifest wrongly holds the target speaker too: its texts must not be learnt
    write_manifest(tmp_path / "train.jsonl", [Utterance(f"u{i}", str(c), "AB", 0.6, "spk") for i, c in enumerate(clips)]
                   + [Utterance("other", str(tmp_path / "o.wav"), "AB", 0.6, "other")])
    write_audio(tmp_path / "o.wav", 0.6, seed=9)
    out = tmp_path / "adapted.pt"
    rc = main(["adapt", str(pkg), *map(str, clips[:2]), "-o", str(out), "--source", str(tmp_path / "train.jsonl"),
               "--rounds", "1", "--epochs", "1", "--keep", "1.0", "--speeds", "--device", "cpu", "--threads", "1"])
    assert rc == 0
    assert "2 --source clips are also target audio" in capsys.readouterr().err
    assert load_package(out).meta["adapted"]["rounds"][0]["source_utts"] == 2  # clip2 and other
