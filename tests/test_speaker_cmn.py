"""features.speaker_cmn: each speaker's mean log-mel removed, in training (from the shards) and in
decoding (from the manifest being decoded); the utterance's own mean where no speaker is known."""
from __future__ import annotations

import dataclasses

import torch

from asr.audio import load_audio
from asr.config import FeatureConfig, ModelConfig
from asr.data.manifest import Utterance
from asr.features import FeatureExtractor, LogMel, SpeakerMeans, batch_means
from asr.model import AcousticModel
from asr.text import CharTokenizer
from tests.conftest import write_audio

CFG = FeatureConfig(n_mels=20, speaker_cmn=True)


def test_speaker_mean_is_subtracted_and_an_unknown_speaker_gets_its_own_mean():
    torch.manual_seed(0)
    wav = 0.1 * torch.randn(2, 8000)
    lengths = torch.tensor([8000, 6000])
    mel = LogMel(CFG)
    raw, flen = mel.raw(wav, lengths)
    spk = torch.randn(20)
    out, _ = mel(wav, lengths, torch.stack([spk, torch.full((20,), float("nan"))]))
    n0, n1 = int(flen[0]), int(flen[1])
    torch.testing.assert_close(out[0, :n0], raw[0, :n0] - spk)
    own, _ = LogMel(dataclasses.replace(CFG, speaker_cmn=False, utterance_cmn=True))(wav, lengths)
    torch.testing.assert_close(out[1], own[1])  # the NaN row: the utterance's own mean, padding at zero
    assert bool((out[1, n1:] == 0).all())
    alone, _ = mel(wav, lengths)  # no means at all: every utterance its own
    torch.testing.assert_close(alone, own)


def test_speaker_means_pool_each_speakers_frames_and_ignore_padding():
    torch.manual_seed(1)
    feats = torch.randn(3, 10, 4)
    lengths = torch.tensor([10, 6, 3])
    feats[1, 6:] = 0
    feats[2, 3:] = 0
    acc = SpeakerMeans(4)
    acc.add(feats[:2], lengths[:2], ["a", "b"])
    acc.add(feats[2:], lengths[2:], ["a"])
    acc.add(feats[:1], lengths[:1], [None])  # no speaker: left out
    means = acc.means()
    torch.testing.assert_close(means["a"], torch.cat([feats[0], feats[2, :3]]).mean(0))
    torch.testing.assert_close(means["b"], feats[1, :6].mean(0))
    rows = batch_means(means, ["b", "zed", None], 4)
    torch.testing.assert_close(rows[0], means["b"])
    assert bool(rows[1:].isnan().all())
    assert batch_means({}, ["a"], 4) is None


def _recognizer():
    from asr.recognizer import Recognizer

    torch.manual_seed(0)
    tok = CharTokenizer()
    frontend = FeatureExtractor(CFG).eval()
    model = AcousticModel(ModelConfig(subsample_channels=4, hidden=16, layers=1, dropout=0.0), 20, tok.vocab_size)
    return Recognizer(model.eval(), frontend, tok), tok


def test_decoding_removes_the_mean_of_all_the_speakers_audio_in_the_manifest(tmp_path):
    from asr.decode.greedy import GreedyDecoder
    from asr.evaluate import decode_utterances

    rec, tok = _recognizer()
    utts = []
    for i, (spk, sec) in enumerate([("a", 0.5), ("a", 0.8), ("b", 0.6)]):
        path = tmp_path / f"u{i}.flac"
        write_audio(path, sec, seed=i, fmt="FLAC")
        utts.append(Utterance(f"u{i}", str(path), "A", sec, spk))
    dec = decode_utterances(rec, GreedyDecoder(tok), utts, num_workers=0, keep_log_probs=True, progress=False)
    wavs = [load_audio(u.audio) for u in utts]
    raw = [rec.frontend.logmel.raw(w[None], torch.tensor([w.shape[0]]))[0][0] for w in wavs]
    mean_a = torch.cat(raw[:2]).mean(0)
    for i, mean in [(0, mean_a), (1, mean_a), (2, raw[2].mean(0))]:
        expected, n = rec.log_probs(wavs[i][None], torch.tensor([wavs[i].shape[0]]), mean[None])
        torch.testing.assert_close(dec.log_probs[f"u{i}"], expected[0, : int(n[0])], atol=1e-5, rtol=1e-5)
    own, n = rec.log_probs(wavs[0][None], torch.tensor([wavs[0].shape[0]]))  # u0 alone: its own mean
    assert not torch.allclose(dec.log_probs["u0"], own[0, : int(n[0])], atol=1e-3)


def _two_speaker_shards(root) -> tuple[list[str], list[Utterance]]:
    from asr.data.shards import write_shards

    utts = []
    for i in range(8):
        sec = 0.3 + 0.05 * (i % 3)
        path = root / "audio" / f"u{i}.flac"
        write_audio(path, sec, seed=i, fmt="FLAC")
        utts.append(Utterance(f"u{i}", str(path), ["AB", "CAT"][i % 2], sec, f"s{i % 2}"))
    return [str(p) for p in write_shards(utts, root / "shards", "train", max_per_shard=3, progress=False)], utts


def _speaker_cmn_config(*extra: str):
    from asr.config import load_config

    return load_config(None, ["features.n_mels=20", "features.speaker_cmn=true", "model.subsample_channels=4",
                              "model.hidden=16", "model.layers=1", "train.max_frames=200", "train.num_workers=0",
                              "train.cmvn_utts=0", "train.epochs=1", "train.bf16=false", "train.threads=1", *extra])


def test_training_with_speaker_cmn_uses_and_keeps_each_training_speakers_mean(tmp_path):
    import asr.train as T
    from asr.package import load_package

    shards, utts = _two_speaker_shards(tmp_path)
    cfg = _speaker_cmn_config()
    T.train(cfg, shards, utts[:2], tmp_path / "exp", device="cpu")
    state = torch.load(tmp_path / "exp" / "ckpt" / "state.pt", weights_only=False)
    means = state["cmvn"]["speakers"]
    assert sorted(means) == ["s0", "s1"]
    mel = LogMel(cfg.features)
    raw = [mel.raw(w[None], torch.tensor([w.shape[0]]))[0][0] for w in (load_audio(u.audio) for u in utts)]
    torch.testing.assert_close(means["s1"], torch.cat(raw[1::2]).mean(0), atol=1e-4, rtol=1e-4)
    # the global CMVN is computed after the speaker means are removed: its mean over all the data is ~0
    assert float(state["cmvn"]["mean"].abs().max()) < 1e-3
    assert load_package(tmp_path / "exp" / "model.pt").features.speaker_cmn


def test_speaker_cmn_prob_zero_trains_on_utterance_means_and_keeps_speaker_cmn_for_decoding(tmp_path):
    import asr.train as T
    from asr.package import load_package

    shards, utts = _two_speaker_shards(tmp_path)
    T.train(_speaker_cmn_config("train.speaker_cmn_prob=0"), shards, utts[:2], tmp_path / "exp", device="cpu")
    state = torch.load(tmp_path / "exp" / "ckpt" / "state.pt", weights_only=False)
    assert state["cmvn"]["speakers"] == {}  # no pass over the training speakers
    # CMVN after each utterance's own mean: its mean is ~0 too, but its spread is not that of speaker means
    assert float(state["cmvn"]["mean"].abs().max()) < 1e-3
    assert load_package(tmp_path / "exp" / "model.pt").features.speaker_cmn


def test_transcribe_same_speaker_pools_the_mean_over_all_inputs(tmp_path, capsys):
    from asr.cli import main
    from asr.package import save_package
    from asr.transcribe import InputFile, OneSpeaker, pooled_mean_log_mel

    rec, tok = _recognizer()
    paths = []
    for i, sec in enumerate([0.5, 1.2]):
        paths.append(tmp_path / f"a{i}.flac")
        write_audio(paths[-1], sec, seed=i, fmt="FLAC")
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")  # left out of the mean
    files = [InputFile(p, p.stem) for p in [*paths, tmp_path / "broken.wav"]]
    mean = pooled_mean_log_mel(rec, files, progress=False)  # each file fits one 30-second window
    wavs = [load_audio(p) for p in paths]
    raw = torch.cat([rec.frontend.logmel.raw(w[None], torch.tensor([w.shape[0]]))[0][0] for w in wavs])
    torch.testing.assert_close(mean, raw.mean(0), atol=1e-4, rtol=1e-4)
    one = OneSpeaker(rec, mean)
    w = wavs[0][None]
    torch.testing.assert_close(one.log_probs(w, torch.tensor([w.shape[1]]))[0],
                               rec.log_probs(w, torch.tensor([w.shape[1]]), mean[None])[0])

    # the CLI: --same-speaker on a speaker-CMN model works; on any other model it is a clear error
    for name, cfg in (("spk.pt", CFG), ("plain.pt", dataclasses.replace(CFG, speaker_cmn=False))):
        save_package(tmp_path / name, rec.model, cfg, torch.zeros(20), torch.ones(20), tok)
    base = ["transcribe", *map(str, paths), "--same-speaker", "--no-progress", "--device", "cpu"]
    assert main([*base, "--model", str(tmp_path / "spk.pt")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main([*base, "--model", str(tmp_path / "plain.pt")]) == 2
    assert "--same-speaker needs a model trained with features.speaker_cmn" in capsys.readouterr().err
