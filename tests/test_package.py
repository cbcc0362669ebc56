"""asr.package: save/load round trip, and every kind of bad file refused with a message that says which."""
from __future__ import annotations

import pytest
import torch

from asr.config import FeatureConfig, ModelConfig
from asr.model import AcousticModel
from asr.package import FORMAT_VERSION, PackageError, load_package, save_package
from asr.text import CharTokenizer, SentencePieceTokenizer, normalize

N_MELS = 24


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    tok = CharTokenizer()
    model = AcousticModel(ModelConfig(subsample_channels=4, hidden=16, layers=2, dropout=0.1), N_MELS, tok.vocab_size)
    features = FeatureConfig(n_mels=N_MELS, hop_ms=10.0)
    mean, std = torch.randn(N_MELS), torch.rand(N_MELS) + 0.5
    path = tmp_path / "model.pt"
    save_package(path, model, features, mean, std, tok, {"epoch": 3, "dev_wer": 0.25})
    return path, model.eval(), features, mean, std


def test_round_trip_gives_identical_outputs(saved):
    path, model, features, mean, std = saved
    pkg = load_package(path)
    assert not pkg.model.training
    assert pkg.model.cfg == model.cfg and pkg.features == features
    assert torch.equal(pkg.cmvn_mean, mean) and torch.equal(pkg.cmvn_std, std)
    assert isinstance(pkg.tokenizer, CharTokenizer)
    assert pkg.meta == {"epoch": 3, "dev_wer": 0.25}
    feats = torch.randn(2, 57, N_MELS)
    lengths = torch.tensor([57, 30])
    with torch.no_grad():
        a, la = model(feats, lengths)
        b, lb = pkg.model(feats, lengths)
    assert torch.equal(a, b) and torch.equal(la, lb)


def test_sentencepiece_tokenizer_travels_in_the_package(tmp_path):
    texts = [normalize(t) for t in ["one two three four", "five six seven", "eight nine ten", "two four six eight"]]
    tok = SentencePieceTokenizer.train(texts * 4, vocab_size=30)
    model = AcousticModel(ModelConfig(subsample_channels=4, hidden=8, layers=1), N_MELS, tok.vocab_size)
    save_package(tmp_path / "sp.pt", model, FeatureConfig(n_mels=N_MELS), torch.zeros(N_MELS), torch.ones(N_MELS), tok)
    pkg = load_package(tmp_path / "sp.pt")
    assert pkg.tokenizer.tokens == tok.tokens
    assert pkg.tokenizer.encode("SIX SEVEN") == tok.encode("SIX SEVEN")
    assert pkg.meta == {}


def test_save_leaves_no_temporary_files(saved):
    path = saved[0]
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]


def test_missing_file(tmp_path):
    with pytest.raises(PackageError, match="no such model package"):
        load_package(tmp_path / "nothing.pt")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.1])
def test_truncated_file_is_refused_as_corrupt_or_truncated(saved, keep):
    path = saved[0]
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(PackageError, match="corrupt or truncated") as exc:
        load_package(path)
    assert str(path) in str(exc.value)


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
                     .numpy().tobytes())
    with pytest.raises(PackageError, match="corrupt or truncated"):
        load_package(path)


def test_other_torch_files_are_not_packages(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(PackageError, match="not an asr model package"):
        load_package(tmp_path / "tensor.pt")
    torch.save({"state_dict": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(PackageError, match="not an asr model package"):
        load_package(tmp_path / "ckpt.pt")


def test_package_with_missing_fields_is_refused(tmp_path):
    path = tmp_path / "partial.pt"
    torch.save({"format": "asr-model", "format_version": FORMAT_VERSION}, path)
    with pytest.raises(PackageError, match="partial.pt"):
        load_package(path)


def test_other_format_version_is_refused(saved):
    path = saved[0]
    data = torch.load(path, weights_only=False)
    data["format_version"] = FORMAT_VERSION + 1
    torch.save(data, path)
    with pytest.raises(PackageError, match=f"format version {FORMAT_VERSION + 1} is not supported") as exc:
        load_package(path)
    assert f"expects {FORMAT_VERSION}" in str(exc.value)


def test_tampered_weights_fail_the_checksum(saved):
    path = saved[0]
    data = torch.load(path, weights_only=False)
    key = next(k for k in data["state_dict"] if k.endswith("weight"))
    data["state_dict"][key] = data["state_dict"][key].clone()
    data["state_dict"][key].view(-1)[0] += 1e-3
    torch.save(data, path)
    with pytest.raises(PackageError, match="checksum"):
        load_package(path)


def test_flipped_bytes_inside_the_file_are_refused(saved):
    path = saved[0]
    data = bytearray(path.read_bytes())
    # Flip bytes in the middle of the file, where the tensor storages lie.
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="corrupt"):
        load_package(path)


@pytest.mark.parametrize("stride", [3, 4])
def test_frame_shift_follows_the_model_stride(tmp_path, stride):
    """Timestamps, LM tuning and exports take seconds per output frame from the package."""
    tok = CharTokenizer()
    model = AcousticModel(ModelConfig(hidden=16, layers=1, stride=stride), N_MELS, tok.vocab_size)
    save_package(tmp_path / "m.pt", model, FeatureConfig(n_mels=N_MELS, hop_ms=10.0), torch.zeros(N_MELS),
                 torch.ones(N_MELS), tok)
    pkg = load_package(tmp_path / "m.pt")
    assert pkg.model.cfg.stride == stride
    assert pkg.frame_shift == pytest.approx(0.01 * stride)
    with torch.no_grad():
        _, out_len = pkg.model(torch.randn(1, 60, N_MELS), torch.tensor([60]))
    assert int(out_len[0]) == -(-60 // stride)


def test_a_package_leaves_out_how_its_lstm_ran(tmp_path):
    """model.lstm_layout is the reader's choice: a model trained packed loads with the default
    (split, the fastest), and the saved config has no key an older reader would refuse."""
    import dataclasses
    tok = CharTokenizer()
    model = AcousticModel(ModelConfig(hidden=16, layers=2, lstm_layout="packed"), N_MELS, tok.vocab_size)
    save_package(tmp_path / "m.pt", model, FeatureConfig(n_mels=N_MELS), torch.zeros(N_MELS), torch.ones(N_MELS), tok)
    raw = torch.load(tmp_path / "m.pt", weights_only=False)
    assert "lstm_layout" not in raw["model_config"] and raw["model_config"]["hidden"] == 16
    pkg = load_package(tmp_path / "m.pt")
    assert pkg.model.cfg == dataclasses.replace(model.cfg, lstm_layout=ModelConfig.lstm_layout)
