"""The model package: one self-contained file with weights, configs, CMVN and tokenizer.

Loading needs nothing else. A file that is not a package, is truncated or corrupt, or was
written by an incompatible format version is refused with a message saying which.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asr import __version__
from asr.config import RUN_KEYS, FeatureConfig, ModelConfig, from_dict, to_dict
from asr.files import atomic_file
from asr.model import AcousticModel
from asr.text import Tokenizer, tokenizer_from_state

FORMAT = "asr-model"
FORMAT_VERSION = 1


class PackageError(ValueError):
    pass


@dataclass
class ModelPackage:
    model: AcousticModel
    features: FeatureConfig
    cmvn_mean: torch.Tensor
    cmvn_std: torch.Tensor
    tokenizer: Tokenizer
    meta: dict[str, Any]

    @property
    def frame_shift(self) -> float:
        """Seconds per output frame: the feature hop times the model's time subsampling."""
        return self.features.hop_ms / 1000 * self.model.cfg.stride


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to ``path`` atomically and durably (``asr.files.atomic_file``)."""
    with atomic_file(path, "wb", fsync=True) as f:
        torch.save(obj, f)


def _weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_digest(obj: Any) -> str:
    """SHA-256 of a nested checkpoint (dicts, lists, tensors, arrays, scalars): every tensor's bytes
    and every other value's repr. torch.load does not verify tensor data, so a flipped byte on disk
    would otherwise come back as a silently different weight."""
    import numpy as np

    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            h.update(f"T{x.dtype}{tuple(x.shape)}".encode())
            h.update(x.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        elif isinstance(x, np.ndarray):
            h.update(f"A{x.dtype}{x.shape}".encode())
            h.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                walk(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    walk(obj)
    return h.hexdigest()


def model_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """A model config's keys without ``RUN_KEYS`` (how the weights run is the reader's choice)."""
    return {k: v for k, v in cfg.items() if f"model.{k}" not in RUN_KEYS}


def save_package(path: str | Path, model: AcousticModel, features: FeatureConfig, cmvn_mean: torch.Tensor,
                 cmvn_std: torch.Tensor, tokenizer: Tokenizer, meta: dict[str, Any] | None = None) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "asr_version": __version__,
            "model_config": model_settings(to_dict(model.cfg)),
            "n_mels": model.n_mels,
            "vocab_size": model.vocab_size,
            "feature_config": to_dict(features),
            "cmvn": {"mean": cmvn_mean.cpu(), "std": cmvn_std.cpu()},
            "tokenizer": tokenizer.state(),
            "state_dict": state,
            "sha256": _weights_digest(state),
            "meta": meta or {},
        },
        path,
    )


def read_checked(path: str | Path, kind: str) -> dict[str, Any]:
    """torch.load with clear errors for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise PackageError(f"{path}: no such {kind} file")
    try:
        with open(path, "rb") as f:
            data = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a torn zip
        raise PackageError(f"{path}: {kind} is corrupt or truncated ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise PackageError(f"{path}: not an asr {kind} (found {type(data).__name__})")
    return data


def load_package(path: str | Path, device: str | torch.device = "cpu") -> ModelPackage:
    data = read_checked(path, "model package")
    if data.get("format") != FORMAT:
        raise PackageError(f"{path}: not an asr model package (format {data.get('format')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise PackageError(
            f"{path}: model package format version {data.get('format_version')} is not supported "
            f"by asr {__version__} (expects {FORMAT_VERSION})"
        )
    try:
        if _weights_digest(data["state_dict"]) != data.get("sha256"):
            raise PackageError(f"{path}: model weights do not match their checksum (corrupt package)")
        model_cfg = from_dict(ModelConfig, model_settings(data["model_config"]))
        model = AcousticModel(model_cfg, data["n_mels"], data["vocab_size"])
        model.load_state_dict(data["state_dict"])
        model.to(device).eval()
        return ModelPackage(
            model=model,
            features=from_dict(FeatureConfig, data["feature_config"]),
            cmvn_mean=data["cmvn"]["mean"],
            cmvn_std=data["cmvn"]["std"],
            tokenizer=tokenizer_from_state(data["tokenizer"]),
            meta=data.get("meta", {}),
        )
    except (KeyError, TypeError, RuntimeError) as e:
        raise PackageError(f"{path}: model package is incomplete or inconsistent ({type(e).__name__}: {e})") from None
