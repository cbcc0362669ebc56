"""Offline augmentation of a training manifest: speed perturbation, additive noise, synthetic speech.

Each utterance is written once per speed factor (``0.9 1.0 1.1``: resampling, so tempo and pitch
change together, as Kaldi's speed perturbation does); each copy gets additive noise at a random SNR
with probability ``noise_prob``. A copy at speed 1.0 without noise is the original file, not
rewritten. Synthetic digit strings spoken by espeak-ng and flite voices can be added as extra
speakers; they are band-limited to ``band_limit_hz`` so that they sound through the same telephone
-like channel as 8 kHz recordings.

Written audio is 16 kHz FLAC under ``out_dir``; ids get a suffix naming the augmentation
(``-sp090``, ``-noise``), so a manifest can hold originals and copies together.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor
from tqdm import tqdm

from asr.audio import AudioError, load_audio, to_mono_16k
from asr.data.manifest import Utterance

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NOISE_KINDS = ("white", "pink", "brown")
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@dataclass(frozen=True)
class AugmentOptions:
    speeds: tuple[float, ...] = (0.9, 1.0, 1.1)
    noise_prob: float = 0.0  # probability that a copy gets additive noise
    snr_db: tuple[float, float] = (5.0, 30.0)  # SNR drawn uniformly in this range
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    seed: int = 0


def speed_perturb(wav: Tensor, factor: float, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Play ``wav`` (S,) ``factor`` times faster (pitch rises with it); returns (≈S / factor,)."""
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if factor == 1.0:
        return wav
    # Resampling from rate*factor to rate keeps the samples' spacing but shortens the signal.
    return AF.resample(wav, int(round(sample_rate * factor)), sample_rate)


def colored_noise(num_samples: int, kind: str, generator: torch.Generator) -> Tensor:
    """Unit-RMS noise (num_samples,) whose power falls as 1/f^0 (white), 1/f (pink) or 1/f^2 (brown)."""
    exponents = {"white": 0.0, "pink": 1.0, "brown": 2.0}
    if kind not in exponents:
        raise ValueError(f"noise kind must be one of {sorted(exponents)}, got {kind!r}")
    white = torch.randn(num_samples, generator=generator)
    if exponents[kind] == 0.0:
        noise = white
    else:
        spec = torch.fft.rfft(white)
        f = torch.arange(spec.shape[0], dtype=torch.float32).clamp(min=1.0)
        noise = torch.fft.irfft(spec / f.pow(exponents[kind] / 2), n=num_samples)
    return noise / noise.pow(2).mean().sqrt().clamp(min=1e-12)


def add_noise(wav: Tensor, noise: Tensor, snr_db: float) -> Tensor:
    """``wav`` (S,) plus ``noise`` (S,) scaled so that signal power / noise power = ``snr_db``."""
    if noise.shape != wav.shape:
        raise ValueError(f"noise must match the signal's shape {tuple(wav.shape)}, got {tuple(noise.shape)}")
    p_sig = wav.pow(2).mean()
    p_noise = noise.pow(2).mean().clamp(min=1e-12)
    scale = torch.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10)))
    return wav + scale * noise


def _tag(speed: float) -> str:
    """The id suffix of a copy at ``speed``: its percentage, "sp090" for 0.9."""
    return f"sp{int(round(speed * 100)):03d}"


def check_speeds(speeds: tuple[float, ...]) -> None:
    """Raise ValueError unless every speed is positive and finite and has a tag of its own: two
    speeds with one tag (0.9 and 0.904, or 1.0 twice) would give copies with one id and one file."""
    bad = [s for s in speeds if not 0 < s < float("inf")]
    if bad:
        raise ValueError(f"speeds must be positive numbers, got {bad}")
    by_tag: dict[str, list[float]] = {}
    for s in speeds:
        by_tag.setdefault(_tag(s), []).append(s)
    for tag, same in by_tag.items():
        if len(same) > 1:
            raise ValueError(f"speeds {same} give the same id suffix -{tag} (ids and file names carry the speed "
                             f"in hundredths): give each speed once, and speeds that differ in hundredths")


def _write(path: Path, wav: Tensor) -> float:
    path.parent.mkdir(parents=True, exist_ok=True)
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    # Noise can push peaks past full scale; scale down rather than clip, which would add distortion.
    data = wav.numpy() / peak * 0.99 if peak > 0.99 else wav.numpy()
    sf.write(str(path), data, SAMPLE_RATE, format="FLAC")
    return wav.shape[0] / SAMPLE_RATE


def _perturb_job(job: tuple) -> Utterance | str:
    """Worker: one augmented copy of one utterance; returns it, or an error message."""
    utt, speed, noise_kind, snr, seed, path = job
    torch.set_num_threads(1)
    try:
        wav = speed_perturb(load_audio(utt.audio), speed)
        if noise_kind:
            gen = torch.Generator().manual_seed(seed)
            wav = add_noise(wav, colored_noise(wav.shape[0], noise_kind, gen), snr)
        dur = _write(Path(path), wav)
    except AudioError as e:  # already names the file
        return str(e)
    except (OSError, RuntimeError, ValueError) as e:
        return f"{utt.audio}: {e}"
    suffix = Path(path).stem[len(utt.id):]
    return Utterance(utt.id + suffix, str(Path(path).resolve()), utt.text, round(dur, 4), utt.speaker)


def augment_utterances(utts: list[Utterance], out_dir: str | Path, opts: AugmentOptions = AugmentOptions(),
                       problems: list[str] | None = None, jobs: int = 1, progress: bool = True) -> list[Utterance]:
    """Speed-perturbed and noisy copies of ``utts`` (see the module docstring), originals included
    where speed 1.0 is asked for. Unreadable audio is reported in ``problems`` and skipped."""
    for k in opts.noise_kinds:
        if k not in NOISE_KINDS:
            raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {k!r}")
    if not 0.0 <= opts.noise_prob <= 1.0:
        raise ValueError(f"noise_prob must be in [0, 1], got {opts.noise_prob}")
    check_speeds(opts.speeds)
    problems = [] if problems is None else problems
    rng = random.Random(opts.seed)
    out = Path(out_dir)
    kept: list[Utterance] = []
    work = []
    for u in utts:
        for speed in opts.speeds:
            noisy = rng.random() < opts.noise_prob
            kind = rng.choice(opts.noise_kinds) if noisy else ""
            snr = rng.uniform(*opts.snr_db)
            seed = rng.randrange(2**31)
            if speed == 1.0 and not noisy:
                kept.append(u)
                continue
            suffix = ("" if speed == 1.0 else f"-{_tag(speed)}") + ("-noise" if noisy else "")
            work.append((u, speed, kind, snr, seed, str(out / (u.speaker or "unknown") / f"{u.id}{suffix}.flac")))
    made: list[Utterance] = []
    with Pool(max(1, jobs), initializer=torch.set_num_threads, initargs=(1,)) as pool:  # see synth.write_split
        for res in tqdm(pool.imap(_perturb_job, work, chunksize=16), total=len(work), desc="augment",
                        unit="utt", disable=not progress):
            if isinstance(res, str):
                log.warning("skipped: %s", res)
                problems.append(res)
            else:
                made.append(res)
    return kept + made


def _synth_job(job: tuple) -> Utterance | str:
    """Worker: speak one digit string with one voice, band-limit, pad, write FLAC."""
    from asr.data.synth import synthesize

    voice, digits, uid, path, seed, band_limit_hz = job
    torch.set_num_threads(1)
    rng = random.Random(seed)
    text = " ".join(DIGIT_WORDS[d] for d in digits)
    try:
        data, sr = synthesize(voice, text, voice.rate * rng.uniform(0.9, 1.1), voice.pitch * rng.uniform(0.9, 1.1))
        wav = to_mono_16k(data, sr, name=uid)
        if band_limit_hz:
            wav = AF.resample(AF.resample(wav, SAMPLE_RATE, 2 * band_limit_hz), 2 * band_limit_hz, SAMPLE_RATE)
        # Synthesizers emit exact digital silence, which no microphone records: add a faint floor.
        gen = torch.Generator().manual_seed(seed)
        level = float(wav.pow(2).mean().sqrt()) * 10 ** (-rng.uniform(35, 55) / 20)
        wav = wav + torch.randn(wav.shape[0], generator=gen) * level
        dur = _write(Path(path), wav)
    except Exception as e:  # one failed synthesis is reported; the rest go on
        return f"{uid}: {e}"
    return Utterance(uid, str(Path(path).resolve()), text.upper(), round(dur, 4), voice.describe())


def synth_digit_strings(num: int, out_dir: str | Path, num_voices: int = 40, min_digits: int = 1,
                        max_digits: int = 7, seed: int = 0, band_limit_hz: int = 4000, use_flite: bool = True,
                        problems: list[str] | None = None, jobs: int = 1, progress: bool = True) -> list[Utterance]:
    """``num`` random digit strings, each spoken by one of ``num_voices`` espeak-ng/flite voices.

    ``band_limit_hz`` (0: off) removes what lies above it, to match band-limited real recordings.
    """
    from asr.data.synth import render_by_voice, train_voices

    if num_voices < 1:
        raise ValueError(f"num_voices must be at least 1, got {num_voices}")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"digit counts must satisfy 1 <= min_digits <= max_digits, got {min_digits} and {max_digits}")
    problems = [] if problems is None else problems
    voices = train_voices(num_voices, [], seed, use_flite)
    rng = random.Random(seed)
    out = Path(out_dir)
    work = []
    for i in range(num):
        voice = voices[i % len(voices)]
        digits = [rng.randrange(10) for _ in range(rng.randint(min_digits, max_digits))]
        uid = f"synth-v{i % len(voices):03d}-{i:05d}"
        work.append((voice, digits, uid, str(out / f"v{i % len(voices):03d}" / f"{uid}.flac"), rng.randrange(2**31),
                     band_limit_hz))
    made: list[Utterance] = []
    for res in render_by_voice(_synth_job, work, jobs, "synth digits", progress):
        if isinstance(res, str):
            log.warning("skipped: %s", res)
            problems.append(res)
        else:
            made.append(res)
    made.sort(key=lambda u: u.id)
    return made

