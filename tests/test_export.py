"""asr.export: TorchScript export equals the package, runs without asr, refuses corrupt files; INT8 stays close."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from asr.cli import main
from asr.decode.greedy import GreedyDecoder
from asr.export import ExportError, export_package, load_exported, quantize_model
from asr.package import load_package
from asr.recognizer import Recognizer
from asr.text import CharTokenizer
from tests.conftest import signal, write_audio


def _tiny_package(path: Path, cfg) -> Path:
    from asr.config import FeatureConfig
    from asr.model import AcousticModel
    from asr.package import save_package

    torch.manual_seed(0)
    tok = CharTokenizer()
    save_package(path, AcousticModel(cfg, 80, tok.vocab_size), FeatureConfig(), torch.full((80,), -5.0),
                 torch.full((80,), 3.0), tok)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from asr.config import ModelConfig

    root = tmp_path_factory.mktemp("export")
    pkg = _tiny_package(root / "m.pt", ModelConfig(subsample_channels=4, hidden=16, layers=2, dropout=0.0))
    export_package(pkg, root / "fp32")
    return pkg, root / "fp32"


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [12000, 20000, 7000]
    wav = torch.zeros(3, max(lengths))
    for i, n in enumerate(lengths):
        wav[i, :n] = torch.from_numpy(signal(n / 16000, seed=i))
    return wav, torch.tensor(lengths)


def test_export_matches_the_package_on_padded_batches(exported):
    pkg, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.ts", "tokens.txt", "transcribe.py"]
    ex = load_exported(out)
    assert ex.tokens == CharTokenizer().tokens and ex.meta["frame_shift"] == pytest.approx(0.04)
    rec = Recognizer.from_package(load_package(pkg))
    wav, lengths = _batch()
    want, want_len = rec.log_probs(wav, lengths)
    got, got_len = ex.log_probs(wav, lengths)
    assert torch.equal(got_len, want_len)
    for b in range(3):
        n = int(want_len[b])
        torch.testing.assert_close(got[b, :n], want[b, :n], atol=1e-5, rtol=1e-5)


def test_example_script_runs_without_asr(exported, tmp_path):
    pkg, out = exported
    audio = tmp_path / "a.wav"
    write_audio(audio, 1.3, rate=22050, seed=4)  # not 16 kHz: the script resamples
    # Block `import asr` inside the child, so the script must stand on torch and soundfile alone.
    code = ("import runpy, sys; sys.modules['asr'] = None; "
            f"sys.argv = ['transcribe.py', {str(out)!r}, {str(audio)!r}]; "
            f"runpy.run_path({str(out / 'transcribe.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from asr.audio import load_audio

    rec = Recognizer.from_package(load_package(pkg))
    wav = load_audio(audio)
    lp, n = rec.log_probs(wav[None], torch.tensor([wav.shape[0]]))
    want = GreedyDecoder(rec.tokenizer)(lp, n)[0].text
    assert proc.stdout == f"{audio}\t{want}\n"


def test_corrupt_truncated_foreign_exports_are_refused(exported, tmp_path):
    import shutil

    _, out = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    data = bytearray((bad / "model.ts").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.ts").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="checksum"):
        load_exported(bad)
    (bad / "model.ts").write_bytes((out / "model.ts").read_bytes()[:1000])
    with pytest.raises(ExportError, match="corrupt, truncated"):
        load_exported(bad)
    shutil.copy(out / "model.ts", bad / "model.ts")
    meta = json.loads((out / "export.json").read_text())
    (bad / "export.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ExportError, match="version 99"):
        load_exported(bad)
    (bad / "export.json").write_text("{not json")
    with pytest.raises(ExportError, match="corrupt export metadata"):
        load_exported(bad)
    (bad / "export.json").unlink()
    with pytest.raises(ExportError, match="export.json is missing"):
        load_exported(bad)


def test_cli_refuses_to_export_a_corrupt_package(exported, tmp_path, capsys):
    pkg, _ = exported
    broken = tmp_path / "broken.pt"
    broken.write_bytes(pkg.read_bytes()[: pkg.stat().st_size // 2])
    assert main(["export", str(broken), "-o", str(tmp_path / "x")]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    assert not (tmp_path / "x" / "model.ts").exists()


def test_int8_quantization_close_to_fp32(exported, tmp_path):
    from asr.config import ModelConfig

    # Wider than the other tests' model so that there is something for INT8 to round.
    pkg = _tiny_package(tmp_path / "w.pt", ModelConfig(subsample_channels=8, hidden=64, layers=2, dropout=0.0))
    rec = Recognizer.from_package(load_package(pkg))
    wav, lengths = _batch()
    fp32, n = rec.log_probs(wav, lengths)
    q = quantize_model(rec.model)
    kinds = {type(m).__module__ for m in q.modules()}
    assert any("quantized.dynamic" in k for k in kinds) and not isinstance(q.lstm, nn.LSTM), "LSTM must be INT8"
    assert "quantized" in type(q.head).__module__, "the CTC head (nn.Linear) must be INT8"
    assert isinstance(rec.model.lstm, nn.LSTM), "quantize_model leaves the original alone"
    rec.model = q
    int8, n8 = rec.log_probs(wav, lengths)
    assert torch.equal(n, n8)
    diff = max(float((int8[b, : n[b]].exp() - fp32[b, : n[b]].exp()).abs().max()) for b in range(3))
    assert 0 < diff < 0.02, f"posteriors moved by {diff}"

    export_package(pkg, tmp_path / "q", quantize=True)
    ex = load_exported(tmp_path / "q")
    assert ex.meta["quantized"] is True
    got, _ = ex.log_probs(wav, lengths)  # another batch size than the one traced
    for b in range(3):
        torch.testing.assert_close(got[b, : n[b]], int8[b, : n[b]], atol=1e-4, rtol=1e-4)
    # Activation scales are per batch in dynamic quantization, so another batch is close, not equal.
    two, _ = ex.log_probs(wav[:2], lengths[:2])
    assert float((two[0, : n[0]].exp() - fp32[0, : n[0]].exp()).abs().max()) < 0.02


def test_cli_transcribe_quantized(exported, tmp_path, capsys):
    pkg, _ = exported
    write_audio(tmp_path / "a.wav", 0.9)
    assert main(["transcribe", "--model", str(pkg), str(tmp_path / "a.wav"), "--quantize", "--no-progress",
                 "-f", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["quantized"] is True
