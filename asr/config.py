"""Typed configuration: frozen dataclasses loaded from YAML, overridable as ``key=value``.

Unknown keys and values of the wrong type fail at once with the key named, so a typo in
``train.lr=1e-3`` is an error rather than a silent no-op.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel front end; the same values must be used in training and inference."""

    sample_rate: int = 16000
    n_mels: int = 80
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    # Highest mel band edge in Hz (0: half the sample rate). Speech recorded at 8 kHz (FSDD,
    # telephone) has nothing above 4 kHz: bands up there hold only the resampler's noise floor.
    f_max: float = 0.0
    # Subtract each utterance's mean log-mel before the global CMVN: removes the recording level
    # and microphone colouring, which a corpus of a few speakers (FSDD) cannot teach the model to
    # ignore. The mean is over the utterance (or the transcription window) alone.
    utterance_cmn: bool = False
    # Subtract the mean log-mel of the utterance's speaker instead: over all of that speaker's audio
    # in the data at hand (training shards, the dev set, the manifest being evaluated). An isolated
    # word's own mean holds much of the word itself; a speaker's mean holds the voice and microphone.
    # Where the speaker is unknown (``asr transcribe``, a TorchScript export) the utterance's mean.
    speaker_cmn: bool = False


@dataclass(frozen=True)
class SpecAugConfig:
    """SpecAugment masks, applied to training batches only."""

    freq_masks: int = 2
    freq_width: int = 15
    time_masks: int = 5
    time_width: int = 20
    time_width_frac: float = 0.05  # no time mask wider than this fraction of the utterance
    # Vocal-tract-length-style warp: each utterance's mel axis is stretched by a random factor in
    # [1 - freq_warp, 1 + freq_warp] (0: off), so a few training speakers stand for more voices.
    freq_warp: float = 0.0


@dataclass(frozen=True)
class TokenizerConfig:
    kind: str = "char"  # "char" or "sentencepiece"
    vocab_size: int = 256  # sentencepiece only
    model_type: str = "unigram"  # sentencepiece only
    # sentencepiece only: a model file trained beforehand (e.g. a recipe's units stage, on all the
    # training transcripts); empty: train one on the transcripts in the training shards
    model: str = ""


@dataclass(frozen=True)
class ModelConfig:
    # Time subsampling in front of the LSTMs. "conv1d": one strided convolution over time
    # (kernel 2 x stride - 1, mel bins as channels, no nonlinearity); "conv2d": two stride-2 3x3 ReLU
    # convolutions over (time, mel) with ``subsample_channels`` channels. conv1d is the default:
    # on the mini corpus it leaves the CTC blank plateau within ~100 steps where conv2d sat on it for
    # 400+ (see benchmarks/RESULTS.md), and costs less.
    subsample: str = "conv1d"
    # Time subsampling factor (output frame = stride x hop). conv1d takes any stride; conv2d is
    # fixed at 4. Character CTC wants more than one frame per character: fast speech at 15-25
    # characters a second is tight at 4 (25 frames a second); conf/mini.yaml uses 3.
    stride: int = 4
    subsample_channels: int = 32  # conv2d only
    hidden: int = 256  # per direction
    layers: int = 3
    dropout: float = 0.1
    # How the BiLSTM meets padding; the same weights and results either way. "split": each layer's
    # frames that every utterance of the batch has in one bidirectional cuDNN call (both directions at
    # once, as the bare LSTM runs), the rest one direction at a time. "padded": each direction of each
    # layer over the padded batch, the backward one on each sequence reversed within its length.
    # "packed": cuDNN over a PackedSequence (a new GEMM shape at every time step). On an H200 (5 x 1024,
    # bf16, 4% padding) split trained at 88-92% of the bare cuDNN LSTM and padded at 79-82%, rows
    # alternated in one run; on an H100 padded trained at 9,262x real time and packed at 6,254x. On
    # the CPU split and padded are as fast; packed is 1.7-2.9x slower.
    lstm_layout: str = "split"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    max_minutes: float = 0.0  # stop after this much wall time (0: no limit)
    lr: float = 2e-3
    weight_decay: float = 1e-2
    adam_beta2: float = 0.999  # AdamW's second-moment decay
    # With features.speaker_cmn: the share of training utterances normalised by their speaker's mean;
    # the rest by their own (0: all by their own, so training needs no speakers, while dev and test are
    # still decoded with speaker means).
    speaker_cmn_prob: float = 1.0
    warmup_steps: int = 200
    final_lr_frac: float = 0.05  # cosine decay to lr * final_lr_frac
    # With max_minutes: the decay is paced by whichever runs out first, steps or wall time, so a
    # time-boxed run (the mini recipe) ends at the low learning rate on any machine speed. Wall time
    # is not reproducible, so this is off by default.
    schedule_by_time: bool = False
    grad_clip: float = 5.0
    max_frames: int = 40000  # feature frames (10 ms) per batch, padding included
    max_batch: int = 128
    num_buckets: int = 10
    # Pad each batch to a multiple of this many frames (1: to its longest utterance). Batches then
    # come in fewer shapes, for GPU libraries that set work up once per new shape (cuDNN's RNN and
    # convolution, cuFFT's plans), at the cost of more padding; not measured on a GPU yet.
    pad_to_frames: int = 1
    shuffle_buffer: int = 2000
    num_workers: int = 1
    accum_steps: int = 1
    # Under DDP, all-reduce gradients in bf16 (half the bytes). CPU processes exchange them over
    # gloo's TCP loopback, which takes CPU time from training: 254x -> 287x real time with two
    # processes on two cores. Rounds the gradients, so off by default.
    ddp_bf16_grads: bool = False
    seed: int = 1234
    bf16: bool = True  # bf16 autocast on CUDA
    # The CTC loss on a GPU: "torch": torch's; "cudnn" takes cuDNN's when the batch fits it (targets of
    # at most 255 tokens), which needs no host-device waits, after checking once that it agrees with
    # torch's. torch's is the default: the training step was 14% faster with it on an H200 (RESULTS.md).
    ctc: str = "torch"
    # Physical CPU cores (both hyper-threads) kept free of loader workers, for the training process's
    # threads that launch the GPU's kernels (0: none; asr.data.cpus).
    reserve_cores: int = 0
    # On a GPU, the caching allocator's expandable segments (asr.gpu_memory): batch shapes change
    # every step, which fragments its fixed-size segments. A PYTORCH_CUDA_ALLOC_CONF of the user's wins.
    expandable_segments: bool = True
    # Dynamic loss scaling (torch's GradScaler) where the LSTM runs in fp16: under bf16 autocast on a
    # GPU, torch runs cuDNN's RNN in fp16 (its autocast casts cuDNN RNNs to fp16 whatever the dtype), and
    # without scaling most of the loss's gradients reaching it are below fp16's range (asr.train.lstm_in_fp16).
    loss_scaling: bool = True
    # bf16 autocast on the CPU as well, where oneDNN has native bf16 (AVX512-BF16 or AMX; elsewhere
    # it is ignored with a warning): about 1.5x faster LSTM steps at the mini recipe's shapes.
    cpu_bf16: bool = False
    log_every: int = 10
    threads: int = 0  # torch CPU threads of the training process (0: 1 on a GPU, torch's default on the CPU)
    max_duration: float = 30.0  # seconds; longer training utterances are skipped and counted
    cmvn_utts: int = 2000  # training utterances read for the CMVN statistics (0: all)
    save_every_steps: int = 0  # also checkpoint mid-epoch every N steps (0: at epoch ends only)
    keep_epochs: int = 5  # per-epoch model packages kept for averaging
    max_nonfinite: int = 20  # consecutive non-finite losses before the run stops


@dataclass(frozen=True)
class ExperimentConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    specaug: SpecAugConfig = field(default_factory=SpecAugConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(ValueError):
    pass


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check ``value`` against ``typ``; ints are accepted where floats are expected."""
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, typ) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(f"config key '{key}': expected {typ.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or '<root>'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = from_dict(typ, value, prefix=f"{full}.")
        else:
            kwargs[key] = _coerce(value, typ, full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


Rule = tuple[Callable[[Any], bool], str]  # (test, what is allowed)


def _at_least(lo: float) -> Rule:
    return (lambda v: v >= lo), f">= {lo}"


def _fraction(upper_open: bool = False) -> Rule:
    if upper_open:
        return (lambda v: 0 <= v < 1), "in [0, 1)"
    return (lambda v: 0 <= v <= 1), "in [0, 1]"


def _one_of(*names: str) -> Rule:
    return (lambda v: v in names), "one of " + ", ".join(repr(n) for n in names)


_POSITIVE: Rule = ((lambda v: v > 0), "> 0")
# Ranges of the fields where a bad value would otherwise fail deep in training (a ZeroDivisionError, a
# SentencePiece traceback) or silently do nothing (epochs=-1). Every test is written so that NaN fails
# it. Fields where 0 means "off" (max_minutes, num_workers, threads, cmvn_utts, ...) allow 0.
# Keys that say how the same weights run, not what they are: --resume takes a change of them, and
# model packages leave them out (so the reader's own default and speed apply, and older readers
# that do not know the key still load the package).
RUN_KEYS = ("model.lstm_layout",)


RULES: dict[str, Rule] = {
    "features.sample_rate": _at_least(1),
    "features.n_mels": _at_least(1),
    "features.win_ms": _POSITIVE,
    "features.hop_ms": _POSITIVE,
    "features.n_fft": _at_least(1),
    "features.f_max": _at_least(0),
    "specaug.freq_masks": _at_least(0),
    "specaug.freq_width": _at_least(0),
    "specaug.time_masks": _at_least(0),
    "specaug.time_width": _at_least(0),
    "specaug.time_width_frac": _fraction(),
    "specaug.freq_warp": _fraction(upper_open=True),
    "tokenizer.kind": _one_of("char", "sentencepiece"),
    "tokenizer.vocab_size": _at_least(1),
    "tokenizer.model_type": _one_of("unigram", "bpe", "char", "word"),  # SentencePiece's model types
    "model.subsample": _one_of("conv1d", "conv2d"),
    "model.stride": _at_least(1),
    "model.subsample_channels": _at_least(1),
    "model.lstm_layout": _one_of("padded", "packed", "split"),
    "model.hidden": _at_least(1),
    "model.layers": _at_least(1),
    "model.dropout": _fraction(upper_open=True),
    "train.epochs": _at_least(1),
    "train.max_minutes": _at_least(0),
    "train.lr": ((lambda v: 0 < v < math.inf), "a finite number > 0"),
    "train.weight_decay": _at_least(0),
    "train.adam_beta2": _fraction(upper_open=True),
    "train.speaker_cmn_prob": _fraction(),
    "train.warmup_steps": _at_least(0),
    "train.final_lr_frac": _fraction(),
    "train.grad_clip": _POSITIVE,
    "train.max_frames": _at_least(1),
    "train.max_batch": _at_least(1),
    "train.num_buckets": _at_least(1),
    "train.pad_to_frames": _at_least(1),
    "train.shuffle_buffer": _at_least(1),
    "train.num_workers": _at_least(0),
    "train.accum_steps": _at_least(1),
    "train.seed": ((lambda v: 0 <= v < 2**32), "in [0, 2**32)"),  # numpy's seed range
    "train.log_every": _at_least(1),
    "train.threads": _at_least(0),
    "train.max_duration": _POSITIVE,
    "train.cmvn_utts": _at_least(0),
    "train.save_every_steps": _at_least(0),
    "train.keep_epochs": _at_least(0),
    "train.max_nonfinite": _at_least(1),
    "train.ctc": _one_of("torch", "cudnn"),
    "train.reserve_cores": _at_least(0),
}


def check_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` itself; raises ConfigError naming the first key whose value is out of range."""
    for key, (ok, allowed) in RULES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not ok(value):
            raise ConfigError(f"config key '{key}': expected {allowed}, got {value!r}")
    if cfg.model.subsample == "conv2d" and cfg.model.stride != 4:
        raise ConfigError(f"config key 'model.stride': conv2d subsampling is fixed at 4, got {cfg.model.stride}")
    return cfg


def yaml_problem(e: yaml.YAMLError) -> str:
    """One line for a PyYAML error: where (1-based line and column, when known) and what."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (getattr(e, "problem", None) or str(e).splitlines()[0])


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> (["train", "lr"], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({yaml_problem(e)})") from None
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read ``path`` (YAML; None for the defaults), apply ``key=value`` overrides and check the ranges."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({yaml_problem(e)})") from None
    for item in overrides or []:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{k}' is not a section")
        node[keys[-1]] = value
    return check_config(from_dict(ExperimentConfig, data))
