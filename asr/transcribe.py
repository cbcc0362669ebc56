"""Transcribe audio files: inputs -> bounded-memory windows -> batched model -> timed words -> txt/json/srt/vtt.

The flow, one function per step:

- ``collect_inputs``: files, folders (recursively) and list files (.txt/.lst/.list of paths) -> ``InputFile``s.
- ``iter_windows``: one file -> overlapping windows (30 s with 4 s overlap by default) read block by
  block with soundfile, so an hour-long recording is never decoded into memory whole.
- ``transcribe_files``: windows of many files -> batches of similar length -> log-probs -> decoder ->
  ``align_words`` (CTC forced alignment over the decoded tokens: word start/end and confidence) ->
  ``merge_windows`` (one word list per file, seams cut in a pause both windows agree on).
- ``to_txt`` / ``to_json`` / ``to_srt`` / ``to_vtt`` and ``run``: write outputs, skip files already done.

Memory is bounded by ``batch_size`` windows in flight, whatever the length of a file.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, TextIO

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor
from tqdm import tqdm

from asr.audio import AudioError, decode_reason, to_mono_16k
from asr.decode.types import Hypothesis
from asr.files import atomic_file
from asr.text import BLANK, Tokenizer

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd",
                  ".caf", ".w64", ".rf64", ".sph", ".nist", ".voc", ".htk", ".wve", ".mat", ".sd2", ".paf"}
LIST_SUFFIXES = {".txt", ".lst", ".list"}
FORMATS = ("txt", "json", "srt", "vtt")


class LogProbModel(Protocol):
    """What transcription needs of a model: ``asr.recognizer.Recognizer`` or anything shaped like it."""

    tokenizer: Tokenizer

    def log_probs(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]: ...


Decoder = Callable[[Tensor, Tensor], list[Hypothesis]]


# ---------------------------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class InputFile:
    """An audio file and the name its outputs get: ``key`` + ``.txt`` etc. (may contain subfolders)."""

    path: Path
    key: str


def _read_list(path: Path, problems: list[str]) -> list[Path]:
    """Paths in a list file, one a line; relative paths are relative to the list's folder; # comments."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line) if os.path.isabs(line) else path.parent / line
        if not p.exists():
            problems.append(f"{path}:{n}: no such file: {p}")
            continue
        out.append(p)
    return out


def collect_inputs(items: list[str | Path], problems: list[str], unique_keys: bool = True) -> list[InputFile]:
    """Expand files, folders (recursively, audio suffixes only) and list files into input files.

    A folder's files keep their path below the folder in ``key`` so that ``a/x.wav`` and ``b/x.wav``
    get different outputs. A path that does not exist, or (with ``unique_keys``, when outputs go to
    files) a second file that would write the same outputs as an earlier one, is added to
    ``problems`` and left out. The same file named twice is taken once.
    """
    found: list[tuple[Path, str]] = []
    for item in map(Path, items):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                problems.append(f"{item}: folder holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES)[:6])} ...)")
            found += [(p, p.relative_to(item).with_suffix("").as_posix()) for p in files]
        elif item.is_file() and item.suffix.lower() in LIST_SUFFIXES:
            for p in _read_list(item, problems):
                if p.is_dir():
                    found += [(f, f.relative_to(p).with_suffix("").as_posix()) for f in sorted(p.rglob("*"))
                              if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES]
                else:
                    found.append((p, p.stem))
        elif item.is_file():
            found.append((item, item.stem))  # any suffix: soundfile decides whether it is audio
        else:
            problems.append(f"{item}: no such file or folder")
    out, seen_paths, seen_keys = [], set(), {}
    for p, key in found:
        real = p.resolve()
        if real in seen_paths:
            continue
        if unique_keys and key in seen_keys:
            problems.append(f"{p}: same output name {key!r} as {seen_keys[key]}; rename one of them")
            continue
        seen_paths.add(real)
        seen_keys[key] = p
        out.append(InputFile(p, key))
    return out


# --------------------------------------------------------------------------------------------- windows

def iter_windows(path: str | Path, window_s: float = 30.0, overlap_s: float = 4.0,
                 rate: int = 16000) -> Iterator[tuple[float, float, Tensor]]:
    """Overlapping windows of one file, read block by block.

    Yields ``(start seconds, new seconds, wav (S,) mono float32 at rate)``: window k starts at
    ``k * (window_s - overlap_s)``; ``new seconds`` is the audio not seen in earlier windows (for
    progress). Only one window of samples is held at a time. Raises AudioError naming the file.
    """
    if not 0 <= overlap_s < window_s:
        raise ValueError(f"overlap must be in [0, window); got overlap {overlap_s} s for a {window_s} s window")
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")  # libsndfile would only say "Format not recognised"
    try:
        f = sf.SoundFile(str(path))
    except FileNotFoundError as e:
        raise AudioError(f"{path}: file not found") from e
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as e:
        raise AudioError(f"{path}: cannot decode audio ({decode_reason(e)})") from e
    with f:
        sr = f.samplerate
        win = max(1, round(window_s * sr))
        hop = max(1, win - round(overlap_s * sr))
        carry = np.zeros((0, f.channels), dtype=np.float32)
        start = 0  # source sample index of the window's first sample
        while True:
            try:
                # Read sequentially rather than seek: seeking is approximate or slow in some compressed formats.
                data = f.read(win - carry.shape[0], dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise AudioError(f"{path}: cannot decode audio at {start / sr:.1f} s ({decode_reason(e)})") from e
            if data.shape[0] == 0:
                if start == 0:
                    raise AudioError(f"{path}: no samples (empty audio)")
                return
            block = np.concatenate([carry, data]) if carry.shape[0] else data
            # A mono block goes in as 1-D: averaging a (S, 1) array over channels costs a strided pass for nothing.
            yield start / sr, data.shape[0] / sr, to_mono_16k(block[:, 0] if block.shape[1] == 1 else block, sr, rate,
                                                              str(path))
            if block.shape[0] < win:
                return
            carry = block[hop:]
            start += hop


# ----------------------------------------------------------------------------------- words and times

@dataclass
class Word:
    word: str
    start: float  # seconds from the start of the file
    end: float
    confidence: float  # mean posterior of the word's tokens over their aligned frames, in [0, 1]


@dataclass
class Transcript:
    path: str
    duration: float  # seconds
    words: list[Word] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(w.word for w in self.words)


def _token_spans(log_probs: Tensor, hyp: Hypothesis) -> list[tuple[int, int, float]]:
    """(start frame, end frame (exclusive), mean posterior) of each of ``hyp.tokens`` in ``log_probs (T, V)``.

    CTC forced alignment of the decoded tokens; where no alignment exists (a beam/LM hypothesis can
    need more frames than there are), each token gets the one frame its decoder emitted it at.
    """
    tokens = hyp.tokens
    try:
        ali, scores = AF.forced_align(log_probs[None].float().cpu().contiguous(),
                                      torch.tensor([tokens], dtype=torch.int32), blank=BLANK)
        spans = AF.merge_tokens(ali[0], scores[0].exp())
        if len(spans) == len(tokens):
            return [(s.start, s.end, float(s.score)) for s in spans]
    except RuntimeError as e:
        log.debug("forced alignment failed (%s); using decoder timesteps", e)
    T = log_probs.shape[0]
    times = hyp.timesteps
    if len(times) != len(tokens):
        times = [round(i * T / len(tokens)) for i in range(len(tokens))]
    return [(t, t + 1, float(log_probs[min(t, T - 1), k].exp())) for t, k in zip(times, tokens)]


def align_words(log_probs: Tensor, hyp: Hypothesis, tokenizer: Tokenizer, offset: float = 0.0,
                frame_shift: float = 0.04, end_time: float | None = None) -> list[Word]:
    """Words of one decoded window with times and confidences.

    Args:
        log_probs: (T, V) CTC log-probs of the window (only its valid frames).
        hyp: the decoder's hypothesis for it (``tokens`` are used).
        offset: the window's start in the file, seconds; frame t starts at ``offset + t * frame_shift``.
        end_time: the window's end, seconds; times are clipped to it (the last frame overhangs the audio).
    Returns:
        words in order; a word ends at the end of its last token's aligned frames.
    """
    limit = float("inf") if end_time is None else end_time
    if not hyp.tokens:
        return []
    spans = _token_spans(log_probs, hyp)
    words: list[Word] = []
    cur: list[tuple[int, tuple[int, int, float]]] = []

    def flush() -> None:
        if cur:
            text = tokenizer.decode([t for t, _ in cur])
            if text:
                words.append(Word(text, round(min(offset + cur[0][1][0] * frame_shift, limit), 3),
                                  round(min(offset + cur[-1][1][1] * frame_shift, limit), 3),
                                  round(sum(s[2] for _, s in cur) / len(cur), 4)))
            cur.clear()

    for tok, span in zip(hyp.tokens, spans):
        if tokenizer.is_space(tok):
            flush()
        else:
            if tokenizer.is_word_start(tok):
                flush()
            cur.append((tok, span))
    flush()
    return words


@dataclass
class WindowWords:
    """The words one window produced, in file time, and the span of audio it saw."""

    start: float
    end: float
    words: list[Word]


def _gaps(words: list[Word], lo: float, hi: float) -> list[tuple[float, float]]:
    """Intervals of [lo, hi] covered by none of ``words``."""
    gaps, t = [], lo
    for w in sorted(words, key=lambda w: w.start):
        if w.start > t:
            gaps.append((t, min(w.start, hi)))
        t = max(t, w.end)
        if t >= hi:
            break
    if t < hi:
        gaps.append((t, hi))
    return [(a, b) for a, b in gaps if b > a]


@dataclass
class Seam:
    """Where to switch from one window to the next (seconds). When only one of them has a pause
    there, the other has a word the cut runs through: ``keep`` says which window ("a": the earlier,
    "b": the later) and ``span`` the word's (start, end); that window's word stands for its audio."""

    cut: float
    keep: str | None = None
    span: tuple[float, float] = (0.0, 0.0)


def seam_cut(a: WindowWords, b: WindowWords) -> Seam:
    """Where to switch from window ``a`` to the next window ``b``.

    Inside the overlap, away from both windows' edges (where words are cut off and the model lacks
    context), pick the longest pause that both windows agree on, so no word of either window spans
    the cut. Without one, the longest pause of either window (the two may split a word differently
    there: "HUMUSS | YOU" in one, "SYOU" in the other); without any, the overlap's middle.
    """
    lo, hi = b.start, min(a.end, b.end)
    if hi <= lo:
        return Seam(lo)
    margin = min(1.0, (hi - lo) / 4)
    lo, hi = lo + margin, hi - margin
    mid = (lo + hi) / 2

    def best(gaps: list[tuple[float, float]]) -> tuple[float, float]:
        return max(gaps, key=lambda g: (round(g[1] - g[0], 3), -abs((g[0] + g[1]) / 2 - mid)))

    gaps_a, gaps_b = _gaps(a.words, lo, hi), _gaps(b.words, lo, hi)
    common = [(max(ga[0], gb[0]), min(ga[1], gb[1])) for ga in gaps_a for gb in gaps_b]
    common = [g for g in common if g[1] > g[0]]
    if common:
        return Seam(sum(best(common)) / 2)
    if not gaps_a and not gaps_b:
        return Seam(mid)
    pause = best(gaps_a + gaps_b)
    cut = sum(pause) / 2
    other, keep = (b, "b") if pause in gaps_a else (a, "a")  # the window without a pause at the cut
    through = [w for w in other.words if w.start < cut < w.end]
    return Seam(cut, keep, (through[0].start, through[0].end)) if through else Seam(cut)


def _mid(w: Word) -> float:
    return (w.start + w.end) / 2


def _kept(w: Word, seam: Seam, side: str) -> bool:
    """Whether window ``side`` ("a", before the seam; "b", after it) keeps ``w``: by its middle,
    except that the word the cut runs through stays in the window that has it, and the other
    window's words inside that word's span go."""
    if seam.keep == side and w.start < seam.cut < w.end:
        return True
    if seam.keep is not None and seam.keep != side and seam.span[0] <= _mid(w) <= seam.span[1]:
        return False
    return _mid(w) < seam.cut if side == "a" else _mid(w) >= seam.cut


def merge_windows(windows: list[WindowWords]) -> list[Word]:
    """One word list from overlapping windows: each word is taken from exactly one window.

    Window k keeps the words on its side of the seam before it and of the seam after it
    (``seam_cut``, ``_kept``), so a word seen by two windows is neither lost nor doubled.
    """
    windows = sorted(windows, key=lambda w: w.start)
    seams = [seam_cut(a, b) for a, b in zip(windows, windows[1:])]
    out = []
    for k, win in enumerate(windows):
        out += [w for w in win.words if (k == 0 or _kept(w, seams[k - 1], "b"))
                and (k == len(windows) - 1 or _kept(w, seams[k], "a"))]
    return out


# ---------------------------------------------------------------------------------------- the pipeline

@dataclass
class _Chunk:
    file: int
    index: int
    start: float
    new_seconds: float
    wav: Tensor  # (S,)


@dataclass
class _FileState:
    item: InputFile
    windows: dict[int, WindowWords] = field(default_factory=dict)
    read: int = 0
    done_reading: bool = False
    error: str | None = None
    end: float = 0.0


@dataclass
class Result:
    """One input's outcome: a transcript, or the error that made it skipped."""

    item: InputFile
    transcript: Transcript | None
    error: str | None = None


class OneSpeaker:
    """A recognizer whose inputs are all one speaker's: every window is normalised by ``mean``
    (n_mels,), the speaker's mean log-mel (for a model trained with ``features.speaker_cmn``)."""

    def __init__(self, rec, mean: Tensor):
        self.rec, self.mean, self.tokenizer = rec, mean, rec.tokenizer

    def log_probs(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.rec.log_probs(wav, lengths, self.mean.expand(wav.shape[0], -1))


@torch.inference_mode()
def pooled_mean_log_mel(rec, files: list[InputFile], rate: int = 16000, window: float = 30.0,
                        progress: bool = True) -> Tensor:
    """The mean raw log-mel (n_mels,) over all the audio of ``files``, read window by window without
    overlap; unreadable files are left out here (transcription reports them)."""
    from asr.features import SpeakerMeans

    logmel = rec.frontend.logmel
    acc = SpeakerMeans(logmel.cfg.n_mels)
    for f in tqdm(files, desc="speaker mean", unit="file", disable=not progress, leave=False):
        try:
            for _, _, wav in iter_windows(f.path, window, 0.0, rate):
                feats, flen = logmel.raw(wav[None].to(rec.device), torch.tensor([wav.shape[0]], device=rec.device))
                acc.add(feats, flen, ["all"])
        except (AudioError, OSError, RuntimeError, ValueError):
            continue
    if "all" not in acc.sums:
        raise AudioError("no readable audio among the inputs to take the speaker's mean from")
    return acc.means()["all"]


def transcribe_files(rec: LogProbModel, decoder: Decoder, files: list[InputFile], *, window: float = 30.0,
                     overlap: float = 4.0, batch_size: int = 16, sample_rate: int = 16000,
                     frame_shift: float = 0.04, progress: bool = True) -> Iterator[Result]:
    """Transcribe ``files``; results come back in input order, one per file.

    Windows of all files go through one queue: a batch is the oldest waiting window plus the
    ``batch_size - 1`` windows closest to it in length, so short files are batched together and a
    long file's windows stream through without its whole audio being held. A file that cannot be
    read is reported (``Result.error``) and the others go on.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    states = [_FileState(f) for f in files]
    seconds = [0.0] * len(files)  # each file's length from its header, for the progress bar
    for i, f in enumerate(files):
        try:
            info = sf.info(str(f.path))
            seconds[i] = info.frames / info.samplerate
        except Exception:  # unreadable headers are reported when the file is read
            pass
    total = sum(seconds)
    counted = [0.0] * len(files)  # seconds of each file the bar has been moved by
    bar = tqdm(total=total, unit="s", desc="transcribe", disable=not progress,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}{postfix}]")
    pool: list[_Chunk] = []
    pool_cap = 2 * batch_size
    next_file = 0
    reader: Iterator[tuple[float, float, Tensor]] | None = None
    next_out = 0  # results are released in input order
    done_files = 0

    def fail(i: int, msg: str) -> None:
        states[i].error = msg
        pool[:] = [c for c in pool if c.file != i]
        bar.write(f"skipped: {msg}", file=sys.stderr)
        # A skipped file's audio counts as done, or a run with bad files would end short of 100%.
        bar.update(round(max(0.0, seconds[i] - counted[i]), 3))
        counted[i] = max(seconds[i], counted[i])

    def finished(i: int) -> bool:
        st = states[i]
        return st.error is not None or (st.done_reading and len(st.windows) == st.read)

    def release() -> Iterator[Result]:
        nonlocal next_out, done_files
        while next_out < len(states) and finished(next_out):
            st = states[next_out]
            if st.error is not None:
                yield Result(st.item, None, st.error)
            else:
                words = merge_windows(list(st.windows.values()))
                yield Result(st.item, Transcript(str(st.item.path), round(st.end, 3), words))
            states[next_out] = _FileState(st.item, done_reading=True, error=st.error)  # free its words
            next_out += 1
            done_files += 1
            bar.set_postfix_str(f"{done_files}/{len(states)} files")

    while True:
        # Fill the queue from the files in order, one open file at a time.
        while len(pool) < pool_cap and (reader is not None or next_file < len(files)):
            if reader is None:
                reader = iter_windows(files[next_file].path, window, overlap, sample_rate)
                next_file += 1
            i = next_file - 1
            st = states[i]
            try:
                start, new_s, wav = next(reader)
            except StopIteration:
                st.done_reading, reader = True, None
                continue
            except (AudioError, OSError, RuntimeError, ValueError, MemoryError) as e:
                fail(i, str(e) if isinstance(e, AudioError) else f"{files[i].path}: {type(e).__name__}: {e}")
                reader = None
                continue
            if st.error is not None:  # a batch with this file's earlier windows failed; read no further
                reader = None
                continue
            pool.append(_Chunk(i, st.read, start, new_s, wav))
            st.read += 1
            st.end = max(st.end, start + wav.shape[0] / sample_rate)
        yield from release()
        if not pool:
            break
        # The oldest window and those nearest to it in length: little padding, and no window waits long.
        n0 = pool[0].wav.shape[0]
        rest = sorted(range(1, len(pool)), key=lambda j: abs(pool[j].wav.shape[0] - n0))[: batch_size - 1]
        take = [0] + rest
        batch = [pool[j] for j in take]
        for j in sorted(take, reverse=True):
            del pool[j]
        lengths = torch.tensor([c.wav.shape[0] for c in batch])
        wav = torch.zeros(len(batch), int(lengths.max()))
        for b, c in enumerate(batch):
            wav[b, : c.wav.shape[0]] = c.wav
        try:
            log_probs, out_len = rec.log_probs(wav, lengths)
            log_probs, out_len = log_probs.float().cpu(), out_len.cpu()
            hyps = decoder(log_probs, out_len)
        except (RuntimeError, ValueError) as e:
            # A batch the model cannot take (e.g. out of memory) fails only the files in it.
            for c in batch:
                if states[c.file].error is None:
                    fail(c.file, f"{files[c.file].path}: decoding failed ({type(e).__name__}: {e})")
            continue
        for b, (c, hyp) in enumerate(zip(batch, hyps)):
            if states[c.file].error is not None:
                continue
            n = int(out_len[b])
            end = c.start + c.wav.shape[0] / sample_rate
            words = align_words(log_probs[b, :n], hyp, rec.tokenizer, c.start, frame_shift, end)
            states[c.file].windows[c.index] = WindowWords(c.start, end, words)
            bar.update(round(c.new_seconds, 3))
            counted[c.file] += c.new_seconds
    yield from release()
    bar.close()


# -------------------------------------------------------------------------------------------- writers

def format_timestamp(seconds: float, decimal_marker: str = ",") -> str:
    """Seconds -> ``HH:MM:SS,mmm`` (SRT) or with ``"."`` ``HH:MM:SS.mmm`` (WebVTT)."""
    ms = max(0, int(round(seconds * 1000)))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal_marker}{ms:03d}"


def subtitle_cues(words: list[Word], max_chars: int = 42, max_duration: float = 6.0,
                  max_pause: float = 1.0) -> list[tuple[float, float, str]]:
    """Group words into subtitle cues ``(start, end, text)``: a new cue at a pause longer than
    ``max_pause`` or when the line would exceed ``max_chars`` characters or ``max_duration`` seconds."""
    cues: list[tuple[float, float, str]] = []
    cur: list[Word] = []
    for w in words:
        if cur and (w.start - cur[-1].end > max_pause or w.end - cur[0].start > max_duration
                    or len(" ".join(x.word for x in cur)) + 1 + len(w.word) > max_chars):
            cues.append((cur[0].start, cur[-1].end, " ".join(x.word for x in cur)))
            cur = []
        cur.append(w)
    if cur:
        cues.append((cur[0].start, cur[-1].end, " ".join(x.word for x in cur)))
    return cues


def to_txt(t: Transcript, meta: dict[str, Any] | None = None) -> str:
    return t.text + "\n"


def to_json(t: Transcript, meta: dict[str, Any] | None = None) -> str:
    """``{"file", "duration", "text", "words": [{"word", "start", "end", "confidence"}], ...meta}``."""
    return json.dumps({"file": t.path, "duration": t.duration, "text": t.text,
                       "words": [asdict(w) for w in t.words], **(meta or {})}, ensure_ascii=False) + "\n"


def to_srt(t: Transcript, meta: dict[str, Any] | None = None) -> str:
    blocks = [f"{n}\n{format_timestamp(s)} --> {format_timestamp(e)}\n{text}\n"
              for n, (s, e, text) in enumerate(subtitle_cues(t.words), 1)]
    return "\n".join(blocks)


def to_vtt(t: Transcript, meta: dict[str, Any] | None = None) -> str:
    blocks = [f"{format_timestamp(s, '.')} --> {format_timestamp(e, '.')}\n{text}\n"
              for s, e, text in subtitle_cues(t.words)]
    return "WEBVTT\n\n" + "\n".join(blocks)


WRITERS: dict[str, Callable[[Transcript, dict[str, Any] | None], str]] = {
    "txt": to_txt, "json": to_json, "srt": to_srt, "vtt": to_vtt}


def output_paths(out_dir: Path, item: InputFile, formats: list[str]) -> list[Path]:
    return [out_dir / f"{item.key}.{fmt}" for fmt in formats]


def _write_atomic(path: Path, text: str) -> None:
    """A stopped job never leaves a half file that a restart would take as done."""
    with atomic_file(path) as f:
        f.write(text)


@dataclass
class RunSummary:
    transcribed: int = 0
    already_done: int = 0
    audio_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def run(rec: LogProbModel, decoder: Decoder, inputs: list[str | Path], *, output_dir: str | Path | None = None,
        formats: list[str] | None = None, overwrite: bool = False, window: float = 30.0, overlap: float = 4.0,
        batch_size: int = 16, sample_rate: int = 16000, frame_shift: float = 0.04, progress: bool = True,
        meta: dict[str, Any] | None = None, stdout: TextIO | None = None, strict: bool = False) -> RunSummary:
    """Transcribe ``inputs`` and write ``formats`` to ``output_dir`` (or ``stdout`` when None).

    With an output folder, an input whose outputs all exist is skipped (restartable batch jobs)
    unless ``overwrite``. Unreadable inputs end up in ``RunSummary.problems``; the rest go on
    (``strict``: the first problem is raised as AudioError; outputs already written stay).
    """
    formats = formats or ["txt"]
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise ValueError(f"unknown output format(s) {unknown}; expected some of {list(WRITERS)}")
    stdout = stdout or sys.stdout
    summary = RunSummary()
    out_dir = Path(output_dir) if output_dir is not None else None
    files = collect_inputs(list(inputs), summary.problems, unique_keys=out_dir is not None)
    if strict and summary.problems:
        raise AudioError(summary.problems[0])
    for p in summary.problems:
        log.warning("skipped: %s", p)
    if out_dir is not None and not overwrite:
        todo = [f for f in files if not all(p.exists() for p in output_paths(out_dir, f, formats))]
        summary.already_done = len(files) - len(todo)
        if summary.already_done:
            log.info("%d of %d files already transcribed in %s (use --overwrite to redo them)",
                     summary.already_done, len(files), out_dir)
        files = todo
    many = len(files) > 1
    for res in transcribe_files(rec, decoder, files, window=window, overlap=overlap, batch_size=batch_size,
                                sample_rate=sample_rate, frame_shift=frame_shift, progress=progress):
        if res.transcript is None:
            if strict:
                raise AudioError(res.error or f"{res.item.path}: failed")
            summary.problems.append(res.error or f"{res.item.path}: failed")
            continue
        t = res.transcript
        summary.transcribed += 1
        summary.audio_seconds += t.duration
        if out_dir is not None:
            try:
                for fmt, path in zip(formats, output_paths(out_dir, res.item, formats)):
                    _write_atomic(path, WRITERS[fmt](t, meta))
            except OSError as e:
                summary.problems.append(f"{res.item.path}: cannot write outputs ({e})")
                summary.transcribed -= 1
            continue
        for fmt in formats:
            if fmt == "txt":
                stdout.write(f"{t.path}\t{t.text}\n" if many else t.text + "\n")
            elif fmt == "json":
                stdout.write(WRITERS[fmt](t, meta))  # one JSON object a line
            else:
                stdout.write((f"==> {t.path} <==\n" if many else "") + WRITERS[fmt](t, meta) + ("\n" if many else ""))
        stdout.flush()
    return summary
