"""Synthetic speech corpora: espeak-ng and flite read real English text in many voices.

The output is a LibriSpeech-layout corpus (``OUT/{split}/speaker/chapter/*.flac`` and
``*.trans.txt``), so it goes through the same preparer as the real corpus. A "speaker" is one
synthesizer voice (engine, voice, variant, base rate and pitch); each utterance jitters rate and
pitch around the speaker's base. Train and test speakers never share a voice variant, and train
and test sentences are disjoint, so the test WER measures unseen voices on unseen text.
"""
from __future__ import annotations

import difflib
import functools
import io
import logging
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from asr.audio import to_mono_16k, trim_silence
from asr.data import espeak
from asr.text import normalize

log = logging.getLogger(__name__)

FORTUNES = Path("/usr/share/games/fortunes")
ESPEAK_LANGS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
# espeak-ng voice variants (the file names ``espeak-ng --voices=variant`` lists after '!v/') that sound
# like people, not effects. The names are case-sensitive: espeak-ng reads an unknown one as no variant.
ESPEAK_VARIANTS = [
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "adam", "Alex", "Andy",
    "aunty", "benjamin", "boris", "caleb", "david", "ed", "edward", "Gene", "iven", "iven2", "john", "Lee",
    "linda", "max", "Michael", "Mike", "norbert", "paul", "pedro", "quincy", "rob", "robert", "steph",
    "shelby", "travis", "victor", "zac", "grandma", "grandpa", "klatt", "klatt2", "klatt3", "Annie",
]
FLITE_VOICES = ["kal", "awb", "slt", "rms"]
DEFAULT_TEST_VOICES = ["espeak:en-us+m7", "espeak:en-gb-x-rp+f4"]
CHUNK = 100  # utterances a synthesis worker renders before it exits (see render_by_voice)

_ALLOWED = re.compile(r"^[A-Za-z' ,;:!?.\-\"]+$")
_ACRONYM = re.compile(r"\b[A-Z]{2,}\b")
_ABBREV = re.compile(r"\b(Mr|Mrs|Ms|Dr|St|Jr|Sr|vs|etc|Inc|Ltd|Co|Prof|Rev|Gen|Col|Lt|Sgt|No)\b\.?")
_SENT_END = re.compile(r"(?<=[.!?])\s+")


class SynthesisError(RuntimeError):
    pass


def default_text_files() -> list[Path]:
    """Debian's fortune cookie files (package ``fortunes``/``fortunes-min``): real English text."""
    if not FORTUNES.is_dir():
        raise SynthesisError(f"{FORTUNES}: not found; install Debian's 'fortunes' package or pass --text FILE")
    return sorted(p for p in FORTUNES.iterdir() if p.is_file() and not p.suffix and p.name not in ("art", "ascii-art"))


def _paragraphs(raw: str) -> Iterator[str]:
    """The entries of ``raw``, each on one line: text between '%' lines (fortune files) or blank lines.

    Lines within an entry are joined, since fortunes and most plain text wrap lines mid-sentence;
    "--" lines (attributions: "-- Mark Twain") are left out.
    """
    lines: list[str] = []
    for line in raw.splitlines() + [""]:
        line = line.strip()
        if line and line != "%":
            if not line.startswith("--"):
                lines.append(line)
        elif lines:
            yield " ".join(lines)
            lines = []


def extract_sentences(raw: str, min_words: int = 3, max_words: int = 16) -> list[str]:
    """Readable sentences from free text.

    A sentence ends at '.', '!' or '?' followed by white space, at a blank line, and at a '%' line
    (fortune files separate entries so); a single line break does not end one. Text with one
    sentence per line therefore needs end punctuation or blank lines between the sentences.
    A sentence is kept only if the synthesizer will say exactly its words: no digits, symbols,
    acronyms or abbreviations, which a TTS engine expands into words the transcript lacks.
    """
    out = []
    for entry in _paragraphs(raw):
        for sent in _SENT_END.split(entry):
            sent = sent.strip()
            # "--" marks an attribution ("-- Mark Twain"), which is not part of the sentence read.
            if not sent or "--" in sent or sent.startswith("-") or not _ALLOWED.match(sent) or _ACRONYM.search(sent) or _ABBREV.search(sent):
                continue
            words = normalize(sent).split()
            if min_words <= len(words) <= max_words and all(len(w) > 1 or w in ("A", "I") for w in words):
                out.append(sent)
    return out


def load_sentences(text_files: list[Path] | None = None, min_words: int = 3, max_words: int = 16) -> list[str]:
    """Unique sentences (by normalised text) from ``text_files``, in a stable order."""
    files = text_files or default_text_files()
    seen, sentences = set(), []
    for path in files:
        try:
            raw = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise SynthesisError(f"{path}: cannot read text ({e})") from e
        for s in extract_sentences(raw, min_words, max_words):
            key = normalize(s)
            if key not in seen:
                seen.add(key)
                sentences.append(s)
    if not sentences:
        raise SynthesisError(f"no usable sentences in {', '.join(map(str, files))}")
    return sentences


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: engine ("espeak" or "flite"), voice name, base rate and pitch."""

    engine: str
    name: str
    rate: float = 1.0  # speaking-rate factor (1 = the engine's default)
    pitch: float = 1.0  # pitch factor

    @classmethod
    def parse(cls, spec: str) -> "Voice":
        """``"espeak:en-us+m3"`` or ``"flite:slt"``, optionally ``@rate,pitch``."""
        spec, _, mods = spec.partition("@")
        engine, sep, name = spec.partition(":")
        if not sep or engine not in ("espeak", "flite") or not name:
            raise SynthesisError(f"voice {spec!r}: expected 'espeak:LANG+VARIANT' or 'flite:NAME'")
        try:
            rate, pitch = (float(x) for x in mods.split(",")) if mods else (1.0, 1.0)
        except ValueError:
            raise SynthesisError(f"voice {spec!r}: modifiers must be '@RATE,PITCH' numbers, got {mods!r}") from None
        return cls(engine, name, rate, pitch)

    def describe(self) -> str:
        return f"{self.engine}:{self.name}@{self.rate:.2f},{self.pitch:.2f}"


def _list(cmd: list[str]) -> str:
    """Output of one of the engines' listing commands."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SynthesisError(f"'{cmd[0]}' is not installed (Debian: apt-get install espeak-ng flite)") from None
    if proc.returncode != 0:
        raise SynthesisError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout


@functools.cache
def espeak_languages() -> frozenset[str]:
    """What espeak-ng takes before '+' in ``-v``, lower-cased (it ignores case there): the languages,
    voice names and voice files that ``espeak-ng --voices`` lists."""
    names = set()
    for line in _list(["espeak-ng", "--voices"]).splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5:
            names.update([fields[1], fields[3], fields[3].replace("_", " "), fields[4]])
            names.update(re.findall(r"\((\S+) \d+\)", line))  # other languages the voice speaks
    return frozenset(n.lower() for n in names)


@functools.cache
def espeak_variants() -> frozenset[str]:
    """The variants espeak-ng takes after '+' (case-sensitive): the file names ``!v/NAME`` that
    ``espeak-ng --voices=variant`` lists."""
    return frozenset(m.group(1) for line in _list(["espeak-ng", "--voices=variant"]).splitlines()
                     if (m := re.search(r"!v/(.+?)\s*(?:\(|$)", line.rstrip())))


@functools.cache
def flite_voices() -> frozenset[str]:
    """The voices compiled into flite (``flite -lv``: "Voices available: kal awb ...")."""
    return frozenset(_list(["flite", "-lv"]).partition(":")[2].split())


def _some(name: str, valid: frozenset[str], examples: list[str]) -> str:
    """A few valid names to offer instead of ``name``: the closest ones, else ``examples``."""
    close = [v for v in valid if v.lower() == name.lower()] or difflib.get_close_matches(name, valid, n=3)
    return ", ".join(close or [e for e in examples if e in valid][:5])


def check_voices(voices: list[Voice]) -> None:
    """Raise SynthesisError for a voice the installed engines lack. They would not fail on it:
    espeak-ng reads an unknown variant as none, and flite falls back to its voice kal."""
    for v in voices:
        spec = f"{v.engine}:{v.name}"
        if v.engine == "flite":
            # flite also loads a voice from a file (-voice PATH.flitevox).
            if v.name not in flite_voices() and not Path(v.name).is_file():
                raise SynthesisError(f"voice {spec!r}: flite has no voice {v.name!r}; it has "
                                     f"{', '.join(sorted(flite_voices()))} (flite -lv)")
            continue
        lang, plus, variant = v.name.partition("+")
        if lang.lower() not in espeak_languages():
            raise SynthesisError(f"voice {spec!r}: espeak-ng has no language or voice {lang!r}; try "
                                 f"{_some(lang, espeak_languages(), ESPEAK_LANGS)} (espeak-ng --voices lists all)")
        if plus and variant not in espeak_variants():
            raise SynthesisError(f"voice {spec!r}: espeak-ng has no variant {variant!r} (names are case-sensitive);"
                                 f" try {_some(variant, espeak_variants(), ESPEAK_VARIANTS)}"
                                 " (espeak-ng --voices=variant lists all)")


def synthesize(voice: Voice, text: str, rate: float, pitch: float) -> tuple:
    """Speak ``text``; returns (samples float32 (S,), sample_rate). Rate and pitch are factors."""
    if voice.engine == "espeak":
        wpm, pitch_0_99 = int(170 * rate), int(min(99, 50 * pitch))
        lib = espeak.engine()
        if lib is not None:
            try:
                wav = lib.speak(text, voice.name, wpm, pitch_0_99).astype("float32") / 32768
            except (ValueError, RuntimeError) as e:
                raise SynthesisError(f"espeak-ng -v {voice.name} failed: {e}") from None
            # The program ends a sentence with ~0.35 s of silence that the library leaves out; keep
            # 0.2 s of it, so that trimming leaves the same margin at both ends.
            return np.concatenate([wav, np.zeros(int(0.2 * lib.sample_rate), wav.dtype)]), lib.sample_rate
        # Text goes through stdin: a sentence starting with '-' would otherwise be read as an option.
        cmd = ["espeak-ng", "-v", voice.name, "-s", str(wpm), "-p", str(pitch_0_99), "--stdout"]
        proc = subprocess.run(cmd, input=text.encode(), capture_output=True, timeout=60)
        if proc.returncode != 0 or not proc.stdout:
            raise SynthesisError(f"espeak-ng -v {voice.name} failed: {proc.stderr.decode(errors='replace').strip()}")
        data, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        return data, sr
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={1.0 / rate:.3f}",
               "--setf", f"int_f0_target_mean={int(100 * pitch)}", "-t", text, "-o", tmp.name]
        proc = subprocess.run(cmd, capture_output=True, timeout=60)
        if proc.returncode != 0:
            raise SynthesisError(f"flite -voice {voice.name} failed: {proc.stderr.decode(errors='replace').strip()}")
        data, sr = sf.read(tmp.name, dtype="float32")
    return data, sr


def train_voices(n: int, exclude: list[Voice], seed: int = 0, use_flite: bool = True,
                 variants: list[str] | None = None) -> list[Voice]:
    """``n`` distinct training speakers: espeak language x variant (``variants``, default
    ``ESPEAK_VARIANTS``) and flite voices, none of whose variant appears in ``exclude``; base rate
    and pitch drawn per speaker."""
    rng = random.Random(seed)
    banned_variants = {v.name.split("+")[-1] for v in exclude if v.engine == "espeak"}
    banned_flite = {v.name for v in exclude if v.engine == "flite"}
    variants = ESPEAK_VARIANTS if variants is None else variants
    pool = [Voice("espeak", f"{lang}+{var}") for lang in ESPEAK_LANGS for var in variants if var not in banned_variants]
    rng.shuffle(pool)
    flite = [Voice("flite", v) for v in FLITE_VOICES if v not in banned_flite] if use_flite else []
    chosen = (flite + pool)[:n]
    return [Voice(v.engine, v.name, rng.uniform(0.85, 1.2), rng.uniform(0.7, 1.4)) for v in chosen]


def _worker_init() -> None:
    # One torch thread per worker: the resampling is small, and workers that each start a thread pool
    # on a machine with few cores spend more time contending than working (measured 2x slower).
    torch.set_num_threads(1)
    # oneDNN compiles a convolution for every new input length, and every utterance has its own:
    # 4 ms a resampling with it, 1 ms without (samples equal to 1e-6).
    torch.backends.mkldnn.enabled = False


def _render(job: tuple) -> tuple[str, str, float] | str:
    """Synthesize one utterance and write its FLAC; returns (id, text, seconds) or an error."""
    voice, text, path, seed = job
    rng = random.Random(seed)
    try:
        data, sr = synthesize(voice, text, voice.rate * rng.uniform(0.9, 1.1), voice.pitch * rng.uniform(0.9, 1.1))
        # The engines pad each sentence with up to half a second of silence: about 10% of the corpus,
        # training time spent on nothing.
        wav = trim_silence(to_mono_16k(data, sr, name=path))
        sf.write(path, wav.numpy(), 16000, format="FLAC")
    except Exception as e:  # one failed utterance is reported, the corpus goes on
        return f"{path}: {e}"
    return Path(path).stem, normalize(text), wav.shape[0] / 16000


def voice_chunks(work: list[tuple], size: int | None = None) -> list[list[tuple]]:
    """``work`` (voice, ...) jobs -> chunks of at most ``size`` (default ``CHUNK``) consecutive jobs
    of one voice, in the order given; the chunks depend only on the work, never on the number of
    processes."""
    size = size or CHUNK
    by_voice: dict = {}
    for job in work:
        by_voice.setdefault(job[0], []).append(job)
    chunks = []
    for jobs in by_voice.values():
        n = -(-len(jobs) // size)
        step = -(-len(jobs) // n)
        chunks += [jobs[i:i + step] for i in range(0, len(jobs), step)]
    return chunks


def _run_chunk(task: tuple[Callable, list[tuple]]) -> list:
    fn, chunk = task
    return [fn(job) for job in chunk]


def render_by_voice(fn: Callable[[tuple], Any], work: list[tuple], jobs: int, desc: str,
                    progress: bool = True) -> Iterator[Any]:
    """``fn(job)`` for every job of ``work`` (tuples whose first item is the voice), in ``jobs``
    worker processes; yields the results as chunks finish (not in the order of ``work``).

    libespeak-ng carries a little state from one sentence to the next (durations move by ~0.1%),
    which no call resets. Each chunk (one voice's jobs, in order: ``voice_chunks``) therefore runs in
    a freshly forked worker, so the audio depends on the work alone, not on the number of processes
    or on which worker got which chunk; and a worker loads its voice once.
    """
    # Workers fork from here. librosa's trim compiles (numba) on its first call, ~0.7 s that every
    # fresh worker would pay again; compiled here, they inherit it. (Numpy only: torch's thread pool
    # must not start in a process that forks.)
    trim_silence(torch.from_numpy(np.random.default_rng(0).standard_normal(1600, dtype=np.float32)))
    with Pool(max(1, jobs), initializer=_worker_init, maxtasksperchild=1) as pool, \
            tqdm(total=len(work), desc=desc, unit="utt", disable=not progress) as bar:
        for results in pool.imap_unordered(_run_chunk, [(fn, chunk) for chunk in voice_chunks(work)]):
            yield from results
            bar.update(len(results))


def write_split(out: Path, voices: list[Voice], sentences: list[str], first_speaker: int, chapter: int, seed: int,
                jobs: int, desc: str) -> list[str]:
    """Render ``sentences`` round-robin over ``voices`` into ``out`` (LibriSpeech layout)."""
    plan: dict[tuple[int, int], list] = {}
    work = []
    for i, text in enumerate(sentences):
        spk = first_speaker + i % len(voices)
        folder = out / str(spk) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        idx = len(plan.setdefault((spk, chapter), []))
        uid = f"{spk}-{chapter}-{idx:04d}"
        plan[(spk, chapter)].append(uid)
        work.append((voices[i % len(voices)], text, str(folder / f"{uid}.flac"), seed * 1_000_003 + i))
    problems, done = [], {}
    for res in render_by_voice(_render, work, jobs, desc):
        if isinstance(res, str):
            log.warning("skipped: %s", res)
            problems.append(res)
        else:
            done[res[0]] = res[1]
    problems.sort()
    for (spk, chapter), uids in plan.items():
        lines = [f"{u} {done[u]}" for u in uids if u in done]
        (out / str(spk) / str(chapter) / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    with open(out / "SPEAKERS.TXT", "w") as f:
        for k, v in enumerate(voices):
            f.write(f"{first_speaker + k} | {v.describe()}\n")
    return problems


def make_corpus(out: str | Path, num_train: int, num_test: int, num_dev: int = 0, text_files: list[Path] | None = None,
                test_voices: list[str] | None = None, num_train_voices: int = 60, seed: int = 0,
                jobs: int = 2, min_words: int = 3, max_words: int = 16, use_flite: bool = True) -> list[str]:
    """Write ``out/train``, ``out/dev`` (train voices, held-out text), ``out/test`` (unseen voices
    and text) and ``out/lm_text.txt`` (all sentences but dev and test, normalised, for an n-gram LM).
    Returns the problems met (utterances that failed to synthesize)."""
    for tool in ("espeak-ng", "flite"):
        if shutil.which(tool) is None and (tool == "espeak-ng" or use_flite):
            raise SynthesisError(f"'{tool}' is not installed (Debian: apt-get install espeak-ng flite)")
    for name, value, least in (("num_train", num_train, 1), ("num_test", num_test, 1), ("num_dev", num_dev, 0),
                               ("num_train_voices", num_train_voices, 1)):
        if value < least:
            raise SynthesisError(f"{name} must be at least {least}, got {value}")
    tvoices = [Voice.parse(v) for v in (test_voices or DEFAULT_TEST_VOICES)]
    check_voices(tvoices)
    # An espeak-ng older or newer than ESPEAK_VARIANTS's may lack a variant: leave it out of training
    # rather than fail, as the user cannot change that list.
    installed = espeak_variants()
    if missing := [v for v in ESPEAK_VARIANTS if v not in installed]:
        log.warning("espeak-ng lacks the variants %s: no training speaker uses them", ", ".join(missing))
    voices = train_voices(num_train_voices, tvoices, seed, use_flite, [v for v in ESPEAK_VARIANTS if v in installed])
    out = Path(out)
    sentences = load_sentences(text_files, min_words, max_words)
    random.Random(seed).shuffle(sentences)
    held = num_test + num_dev
    if len(sentences) <= held:
        # Train and test text must stay disjoint: no held-out sentence may be reused for training.
        raise SynthesisError(f"{len(sentences)} usable sentences, but {held + 1} are needed: {num_test} test + "
                             f"{num_dev} dev + at least 1 for training; give more text or fewer test/dev utterances")
    test_text = sentences[:num_test]
    dev_text = sentences[num_test:held]
    rest = sentences[held:]
    if len(rest) < num_train:
        log.warning("only %d training sentences for %d training utterances: they are reused", len(rest), num_train)
    train_text = [rest[i % len(rest)] for i in range(num_train)]
    problems = write_split(out / "train", voices, train_text, 1000, 1, seed, jobs, "synth train")
    if num_dev:
        problems += write_split(out / "dev", voices, dev_text, 1000, 2, seed + 1, jobs, "synth dev")
    problems += write_split(out / "test", tvoices, test_text, 9000, 1, seed + 2, jobs, "synth test")
    # Text for a language model: every usable sentence except the dev and test ones.
    (out / "lm_text.txt").write_text("".join(normalize(t) + "\n" for t in rest))
    return problems
