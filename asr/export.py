"""Deployable models: INT8 dynamic quantization, and a TorchScript export that runs without ``asr``.

``export_package(MODEL, DIR)`` writes to DIR:

- ``model.ts``: TorchScript of log-mel + CMVN + acoustic model; ``forward(wav (B, S) float32 at 16 kHz,
  lengths (B,) int64) -> (log_probs (B, T', V), out_lengths (B,))``, blank = 0, ``frame_shift``
  seconds per output frame (0.04 at the default stride 4);
- ``tokens.txt``: the token of each id, one a line (line 1 is id 0, the blank);
- ``export.json``: format, version, sample rate, frame shift, tokenizer kind and the SHA-256 of
  ``model.ts``, which ``load_exported`` checks so a corrupt or truncated export is refused;
- ``transcribe.py``: a standalone example (torch + soundfile only) that greedy-decodes audio files.
"""
from __future__ import annotations

import copy
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from asr import __version__
from asr.features import FeatureExtractor
from asr.model import AcousticModel
from asr.package import ModelPackage, PackageError, load_package

EXPORT_FORMAT = "asr-torchscript"
EXPORT_VERSION = 1


class ExportError(PackageError):
    """An export that cannot be written or loaded; the message says which file and why."""


def quantize_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with INT8 weights in every ``nn.LSTM`` and ``nn.Linear`` (dynamic quantization).

    Activations are quantized on the fly per batch, so no calibration data is needed. CPU only; the
    convolutional front end stays float32.
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao.quantization warns that it is moving to torchao; the eager dynamic path still works here
        # and torchao is not a dependency.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*")
        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.LSTM, nn.Linear}, dtype=torch.qint8)


class WaveformRecognizer(nn.Module):
    """Front end and acoustic model as one module: 16 kHz waveforms in, CTC log-probs out."""

    def __init__(self, frontend: FeatureExtractor, model: nn.Module):
        super().__init__()
        self.frontend = frontend
        self.model = model

    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """wav (B, S) float32 at 16 kHz, lengths (B,) in samples -> log_probs (B, T', V), out_lengths (B,)."""
        feats, flen = self.frontend(wav, lengths)
        return self.model(feats, flen)


class _ZeroStateLSTM(nn.Module):
    """Calls a dynamically quantized LSTM with explicit zero initial states of the packed batch's size.

    Left to itself, the quantized LSTM sizes its initial state with a Python int, which tracing would
    freeze to the example batch size; a state derived from the tensor ``sorted_indices`` (B,) stays dynamic.
    """

    def __init__(self, lstm: nn.Module):
        super().__init__()
        self.lstm = lstm
        self.num_states = lstm.num_layers * (2 if lstm.bidirectional else 1)
        self.hidden_size = lstm.hidden_size

    def forward(self, packed: PackedSequence) -> tuple[PackedSequence, tuple[Tensor, Tensor]]:
        assert packed.sorted_indices is not None
        zero = torch.zeros_like(packed.sorted_indices, dtype=packed.data.dtype)  # (B,)
        h0 = zero.view(1, -1, 1).expand(self.num_states, -1, self.hidden_size).contiguous()
        return self.lstm(packed, (h0, h0.clone()))


def waveform_recognizer(pkg: ModelPackage, quantize: bool = False) -> WaveformRecognizer:
    """The package's front end (log-mel + CMVN) and model, optionally INT8-quantized, on the CPU."""
    frontend = FeatureExtractor(pkg.features)
    frontend.cmvn.set_stats(pkg.cmvn_mean, pkg.cmvn_std)
    model: nn.Module = pkg.model.cpu().eval()
    if quantize:
        model = quantize_model(model)
        if isinstance(model, AcousticModel):
            model.lstm = _ZeroStateLSTM(model.lstm)
    return WaveformRecognizer(frontend.eval(), model).eval()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _example_batch(lengths: list[int], seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    wav = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wav[i, :n] = 0.1 * torch.randn(n, generator=g)
    return wav, torch.tensor(lengths)


def _trace(module: WaveformRecognizer) -> torch.jit.ScriptModule:
    """Trace on a padded batch of two, then check a batch of three other lengths gives the same output.

    Tracing (not scripting) because the model's config dataclasses are not scriptable; the check
    guards against a shape having been frozen into the graph.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # "torch.jit is deprecated"
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # pad_packed_sequence's bounds check
        traced = torch.jit.trace(module, _example_batch([16000, 9600]), check_trace=False)
    wav, lengths = _example_batch([8000, 27200, 12345], seed=1)
    with torch.inference_mode():
        want, want_len = module(wav, lengths)
        got, got_len = traced(wav, lengths)
    if got.shape != want.shape or not torch.equal(got_len, want_len) or (got - want).abs().max() > 1e-4:
        raise ExportError(f"traced model differs from the original on a new batch (max diff "
                          f"{(got - want).abs().max() if got.shape == want.shape else 'shape'}); not exported")
    return traced


def export_package(package_path: str | Path, out_dir: str | Path, quantize: bool = False) -> dict[str, Any]:
    """Write ``model.ts``, ``tokens.txt``, ``export.json`` and ``transcribe.py`` to ``out_dir``; return the metadata."""
    pkg = load_package(package_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    traced = _trace(waveform_recognizer(pkg, quantize))
    tokens = list(pkg.tokenizer.tokens)
    if any("\n" in t for t in tokens):
        raise ExportError("a token contains a newline; tokens.txt cannot hold it")
    tokens_txt = "\n".join(tokens) + "\n"
    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "asr_version": __version__,
        "sample_rate": pkg.features.sample_rate, "frame_shift": pkg.frame_shift, "blank": 0,
        "vocab_size": len(tokens), "tokenizer": pkg.tokenizer.kind, "quantized": quantize,
        "source": str(package_path),
        "source_meta": {k: v for k, v in pkg.meta.items() if k in ("epoch", "step", "dev_wer")},
    }
    model_path = out / "model.ts"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        # Tokens and metadata also ride inside model.ts, so the single file is enough to decode.
        torch.jit.save(traced, str(model_path),
                       _extra_files={"tokens.txt": tokens_txt, "export.json": json.dumps(meta)})
    meta["sha256"] = _sha256(model_path)
    (out / "tokens.txt").write_text(tokens_txt, encoding="utf-8")
    (out / "export.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out / "transcribe.py").write_text(EXAMPLE_SCRIPT)
    return meta


@dataclass
class ExportedModel:
    module: torch.jit.ScriptModule
    tokens: list[str]
    meta: dict[str, Any]

    def log_probs(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """wav (B, S) at ``meta["sample_rate"]``, lengths (B,) -> log_probs (B, T', V), out_lengths (B,)."""
        with torch.inference_mode():
            return self.module(wav, lengths)


def load_exported(out_dir: str | Path) -> ExportedModel:
    """Load an export folder, refusing a missing, foreign, other-version, corrupt or truncated one."""
    out = Path(out_dir)
    meta_path, model_path, tokens_path = out / "export.json", out / "model.ts", out / "tokens.txt"
    for p in (meta_path, model_path, tokens_path):
        if not p.is_file():
            raise ExportError(f"{out}: not a complete asr export ({p.name} is missing)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{meta_path}: corrupt export metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{meta_path}: not an asr TorchScript export (format "
                          f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("format_version") != EXPORT_VERSION:
        raise ExportError(f"{meta_path}: export format version {meta.get('format_version')} is not supported "
                          f"by asr {__version__} (expects {EXPORT_VERSION})")
    if _sha256(model_path) != meta.get("sha256"):
        raise ExportError(f"{model_path}: checksum does not match export.json (file corrupt, truncated or replaced)")
    tokens = tokens_path.read_text(encoding="utf-8").split("\n")[: meta["vocab_size"]]
    if len(tokens) != meta["vocab_size"]:
        raise ExportError(f"{tokens_path}: {len(tokens)} tokens, export.json says {meta['vocab_size']}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            module = torch.jit.load(str(model_path), map_location="cpu").eval()
    except RuntimeError as e:
        raise ExportError(f"{model_path}: cannot load TorchScript ({e})") from None
    return ExportedModel(module, tokens, meta)


EXAMPLE_SCRIPT = '''#!/usr/bin/env python3
"""Transcribe audio files with a model exported by `asr export`; needs torch, numpy and soundfile only
(plus torchaudio for audio that is not at the model's sample rate).

    python transcribe.py EXPORT_DIR audio.wav [more.flac ...]

Greedy CTC decoding of the whole file at once; for recordings longer than a few minutes use
`asr transcribe`, which windows long audio with bounded memory.
"""
import json
import sys
from pathlib import Path

import soundfile as sf
import torch


def load_wav(path: str, rate: int) -> torch.Tensor:
    """Mono float32 samples at `rate`; shape (S,)."""
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    wav = torch.from_numpy(data.mean(axis=1))
    if sr != rate:
        import torchaudio.functional as F

        wav = F.resample(wav, sr, rate)
    return wav


def greedy_text(log_probs: torch.Tensor, tokens: list, blank: int = 0) -> str:
    """log_probs (T, V) -> text: best token per frame, repeats merged, blanks dropped.

    Characters mark word breaks with "|", SentencePiece pieces start a word with "\\u2581".
    """
    out, prev = [], blank
    for i in log_probs.argmax(-1).tolist():
        if i != blank and i != prev and not (tokens[i].startswith("<") and tokens[i].endswith(">")):
            out.append(tokens[i])
        prev = i
    return " ".join("".join(out).replace("\\u2581", " ").replace("|", " ").split())


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    model_dir = Path(sys.argv[1])
    meta = json.loads((model_dir / "export.json").read_text())
    tokens = (model_dir / "tokens.txt").read_text(encoding="utf-8").split("\\n")[: meta["vocab_size"]]
    model = torch.jit.load(str(model_dir / "model.ts"), map_location="cpu").eval()
    for path in sys.argv[2:]:
        wav = load_wav(path, meta["sample_rate"])
        with torch.inference_mode():
            log_probs, n = model(wav[None], torch.tensor([wav.shape[0]]))
        print(f"{path}\\t{greedy_text(log_probs[0, : int(n[0])], tokens, meta['blank'])}", flush=True)


if __name__ == "__main__":
    main()
'''
