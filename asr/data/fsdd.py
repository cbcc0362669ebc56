"""Free Spoken Digit Dataset (FSDD) -> speaker-disjoint manifests of isolated and connected digits.

FSDD holds one spoken digit per file, ``{digit}_{speaker}_{index}.wav`` (8 kHz, mono), trimmed to
almost no silence. This module writes, for each of train / dev / test (disjoint sets of speakers):

- isolated digits: every clip, resampled to 16 kHz, with a short random lead-in and tail;
- connected digit strings of ``min_digits``..``max_digits`` digits, made by concatenating clips
  of one speaker with random short pauses between them (text like ``"THREE SEVEN ONE"``).

All audio is written as 16 kHz FLAC under ``OUT/audio/{speaker}/``; the manifests are
``OUT/train.jsonl``, ``OUT/dev.jsonl``, ``OUT/test_isolated.jsonl`` and ``OUT/test_connected.jsonl``
(and ``dev_isolated`` / ``dev_connected``), plus ``OUT/split.json`` naming the speakers of each split.
"""
from __future__ import annotations

import json
import logging
import random
import re
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from asr.audio import AudioError, load_audio
from asr.data.manifest import Utterance, write_manifest

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DIGIT_WORDS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]
FILE_NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$", re.IGNORECASE)
# The quietest plausible background: pauses are never digital silence, which no microphone records
# and which would give the model a cue that real connected speech lacks.
MIN_NOISE_RMS = 1e-4


class FSDDError(ValueError):
    pass


@dataclass(frozen=True)
class Clip:
    """One FSDD recording."""

    digit: int
    speaker: str
    index: int
    path: Path


@dataclass(frozen=True)
class PrepareOptions:
    """How to split and what to build; the defaults are the digits recipe's."""

    test_speakers: tuple[str, ...] = ("jackson",)
    dev_speakers: tuple[str, ...] = ("nicolas",)
    connected_per_speaker: int = 200  # connected strings per training speaker
    eval_connected_per_speaker: int = 100  # connected strings per dev/test speaker
    min_digits: int = 2
    max_digits: int = 7
    pause: tuple[float, float] = (0.03, 0.30)  # seconds between digits
    edge: tuple[float, float] = (0.05, 0.25)  # seconds of lead-in and tail
    seed: int = 0


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: per-clip resampling of a few thousand samples gains nothing from
    threads, and on a busy machine their synchronisation makes it up to 60x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def digits_text(digits: list[int]) -> str:
    """[3, 7, 1] -> ``"THREE SEVEN ONE"``."""
    return " ".join(DIGIT_WORDS[d] for d in digits)


def scan_fsdd(root: str | Path, problems: list[str] | None = None, strict: bool = False) -> list[Clip]:
    """Every ``{digit}_{speaker}_{index}.wav`` under ``root`` (or ``root/recordings``), sorted.

    A ``.wav`` whose name does not follow the pattern is reported in ``problems`` and skipped
    (``strict``: raised as FSDDError).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    clips = []
    for path in sorted(folder.glob("*.wav")):
        m = FILE_NAME.match(path.name)
        if not m:
            msg = f"{path}: name is not {{digit}}_{{speaker}}_{{index}}.wav"
            if strict:
                raise FSDDError(msg)
            log.warning("skipped: %s", msg)
            if problems is not None:
                problems.append(msg)
            continue
        clips.append(Clip(int(m.group(1)), m.group(2).lower(), int(m.group(3)), path))
    if not clips:
        raise FileNotFoundError(f"{folder}: no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) found")
    return sorted(clips, key=lambda c: (c.speaker, c.digit, c.index))


def split_speakers(speakers: list[str], test: list[str] | tuple[str, ...],
                   dev: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """{"train", "dev", "test"} -> speakers; test and dev are as given, train is everyone else.

    Unknown names, a speaker in both dev and test, or no speaker left to train on are errors.
    """
    known = sorted(set(speakers))
    for name, group in (("test", test), ("dev", dev)):
        unknown = sorted(set(group) - set(known))
        if unknown:
            raise FSDDError(f"{name} speakers {unknown} are not in the corpus (speakers: {', '.join(known)})")
    both = sorted(set(test) & set(dev))
    if both:
        raise FSDDError(f"speakers {both} are in both the dev and the test split")
    if not test:
        raise FSDDError("at least one test speaker is needed")
    train = [s for s in known if s not in set(test) | set(dev)]
    if not train:
        raise FSDDError(f"no training speakers left: test {list(test)}, dev {list(dev)}, corpus {known}")
    return {"train": train, "dev": sorted(dev), "test": sorted(test)}


def noise_floor(wav: Tensor, edge_samples: int = 320) -> float:
    """RMS of the quieter end of a clip (first or last 20 ms): the recording's background level."""
    ends = [wav[:edge_samples], wav[-edge_samples:]]
    rms = min(float(e.pow(2).mean().sqrt()) for e in ends if e.numel())
    return max(rms, MIN_NOISE_RMS)


def concatenate(clips: list[Tensor], gaps: list[int], noise_rms: float, generator: torch.Generator) -> Tensor:
    """Clips joined by gaps of background noise.

    Args:
        clips: n waveforms, each (S_i,).
        gaps: n + 1 gap lengths in samples: lead-in, the n - 1 pauses, tail.
        noise_rms: level of the Gaussian noise that fills the gaps.
    Returns:
        (sum(S_i) + sum(gaps),) waveform.
    """
    if len(gaps) != len(clips) + 1:
        raise ValueError(f"gaps must have one entry more than clips; got {len(gaps)} gaps for {len(clips)} clips")
    parts = []
    for i, g in enumerate(gaps):
        parts.append(torch.randn(g, generator=generator) * noise_rms)
        if i < len(clips):
            parts.append(clips[i])
    return torch.cat(parts)


class _ClipCache:
    """16 kHz waveforms of clips, read once; unreadable clips are remembered and reported once."""

    def __init__(self, problems: list[str], strict: bool = False):
        self.wavs: dict[Path, Tensor] = {}
        self.bad: set[Path] = set()
        self.problems = problems
        self.strict = strict

    def get(self, clip: Clip) -> Tensor | None:
        if clip.path in self.bad:
            return None
        if clip.path not in self.wavs:
            try:
                self.wavs[clip.path] = load_audio(clip.path, SAMPLE_RATE)
            except AudioError as e:
                if self.strict:
                    raise
                log.warning("skipped: %s", e)
                self.problems.append(str(e))
                self.bad.add(clip.path)
                return None
        return self.wavs[clip.path]


def _write_flac(path: Path, wav: Tensor) -> float:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Clipping guard: pauses add noise, and an int16 FLAC cannot hold |x| > 1.
    sf.write(str(path), np.clip(wav.numpy(), -1.0, 1.0), SAMPLE_RATE, format="FLAC")
    return wav.shape[0] / SAMPLE_RATE


def _seconds(rng: random.Random, span: tuple[float, float]) -> int:
    return int(round(rng.uniform(*span) * SAMPLE_RATE))


def make_isolated(clips: list[Clip], cache: _ClipCache, out: Path, opts: PrepareOptions,
                  rng: random.Random, gen: torch.Generator) -> list[Utterance]:
    """Each clip with a random lead-in and tail of its own background noise, as one utterance.

    The padding matters for CTC: the shortest FSDD clips (0.14 s) have fewer 40 ms output frames
    than their word has letters.
    """
    utts = []
    for c in clips:
        wav = cache.get(c)
        if wav is None:
            continue
        audio = concatenate([wav], [_seconds(rng, opts.edge), _seconds(rng, opts.edge)], noise_floor(wav), gen)
        uid = f"fsdd-{c.speaker}-{c.digit}-{c.index:02d}"
        dur = _write_flac(out / c.speaker / f"{uid}.flac", audio)
        utts.append(Utterance(uid, str((out / c.speaker / f"{uid}.flac").resolve()), DIGIT_WORDS[c.digit], dur, c.speaker))
    return utts


def make_connected(clips: list[Clip], cache: _ClipCache, out: Path, count: int, opts: PrepareOptions,
                   rng: random.Random, gen: torch.Generator) -> list[Utterance]:
    """``count`` strings of random digits per speaker, each digit a random clip of that speaker."""
    by_speaker: dict[str, dict[int, list[Clip]]] = defaultdict(lambda: defaultdict(list))
    for c in clips:
        if cache.get(c) is not None:
            by_speaker[c.speaker][c.digit].append(c)
    utts = []
    for speaker in sorted(by_speaker):
        have = by_speaker[speaker]
        digits_available = sorted(have)
        if not digits_available:
            continue
        for n in range(count):
            length = rng.randint(opts.min_digits, opts.max_digits)
            digits = [rng.choice(digits_available) for _ in range(length)]
            chosen = [rng.choice(have[d]) for d in digits]
            wavs = [cache.get(c) for c in chosen]
            gaps = [_seconds(rng, opts.edge)] + [_seconds(rng, opts.pause) for _ in range(length - 1)]
            gaps.append(_seconds(rng, opts.edge))
            audio = concatenate(wavs, gaps, min(noise_floor(w) for w in wavs), gen)
            uid = f"fsdd-{speaker}-c{n:04d}"
            path = out / speaker / f"{uid}.flac"
            dur = _write_flac(path, audio)
            utts.append(Utterance(uid, str(path.resolve()), digits_text(digits), dur, speaker))
    return utts


def prepare_fsdd(root: str | Path, out_dir: str | Path, opts: PrepareOptions = PrepareOptions(),
                 problems: list[str] | None = None, strict: bool = False) -> dict[str, list[Utterance]]:
    """Write the speaker-disjoint manifests (see the module docstring); returns them by name.

    Unreadable or misnamed recordings are reported in ``problems`` and skipped (``strict``: the
    first one is raised, and no manifest is written).
    """
    if not 1 <= opts.min_digits <= opts.max_digits:
        raise FSDDError(f"digit string length: need 1 <= min_digits <= max_digits, got {opts.min_digits}..{opts.max_digits}")
    problems = [] if problems is None else problems
    out = Path(out_dir)
    clips = scan_fsdd(root, problems, strict)
    split = split_speakers([c.speaker for c in clips], opts.test_speakers, opts.dev_speakers)
    cache = _ClipCache(problems, strict)
    audio_dir = out / "audio"
    manifests: dict[str, list[Utterance]] = {}
    for k, name in enumerate(("train", "dev", "test")):
        mine = [c for c in clips if c.speaker in split[name]]
        # One generator per split, so the test set does not change when training options do.
        rng = random.Random(opts.seed * 1000 + k)
        gen = torch.Generator().manual_seed(opts.seed * 1000 + k)
        count = opts.connected_per_speaker if name == "train" else opts.eval_connected_per_speaker
        with one_thread():
            isolated = make_isolated(mine, cache, audio_dir, opts, rng, gen)
            connected = make_connected(mine, cache, audio_dir, count, opts, rng, gen)
        if name == "train":
            manifests["train"] = isolated + connected
        else:
            manifests[f"{name}_isolated"] = isolated
            manifests[f"{name}_connected"] = connected
            manifests[name] = isolated + connected
        cache.wavs.clear()  # a split's clips are not needed by the next split
    for name, utts in manifests.items():
        write_manifest(out / f"{name}.jsonl", utts)
    (out / "split.json").write_text(json.dumps({**split, "options": {
        k: list(v) if isinstance(v, tuple) else v for k, v in opts.__dict__.items()}}, indent=1) + "\n")
    return manifests
