"""Webdataset shards: writing them from a manifest, and streaming them back as length-bucketed batches.

A shard is a tar of samples ``{id}.flac`` (16 kHz mono 16-bit FLAC) or ``{id}.wav`` (the same as PCM
WAV: 1.4-1.8x the bytes, but nearly free to decode, where FLAC decoding is most of a loader worker's
time) + ``{id}.json`` (the manifest fields).
Reading splits the shard list across ranks (``rank``/``world``) and then across loader workers, so
no sample is read twice in an epoch; the shard order is reshuffled every epoch from ``seed``.
Batches are built by total padded frames (``max_frames``) within duration buckets.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import soundfile as sf
import torch
import webdataset as wds
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm

from asr.audio import AudioError, load_audio, to_pcm16
from asr.data.manifest import ManifestError, Utterance

log = logging.getLogger(__name__)

HOP = 160  # samples per 10 ms feature frame at 16 kHz


AUDIO_FORMATS = {"flac": "FLAC", "wav": "WAV"}  # shard member extension -> libsndfile format


def audio_bytes(utt: Utterance, ext: str = "flac") -> tuple[bytes, float]:
    """The utterance's audio as 16 kHz mono 16-bit FLAC (``ext`` "flac") or WAV ("wav"), and its
    duration in seconds.

    The audio is always decoded, so that a corrupt or truncated file, or one with NaN/Inf samples,
    is refused here (AudioError naming the file) and not halfway through training; a file that is
    already in that form is then copied as is.
    """
    wav = load_audio(utt.audio)
    seconds = wav.shape[0] / 16000
    info = sf.info(utt.audio)
    fmt = AUDIO_FORMATS[ext]
    if info.format == fmt and info.subtype == "PCM_16" and info.samplerate == 16000 and info.channels == 1:
        return Path(utt.audio).read_bytes(), seconds
    buf = io.BytesIO()
    # Quantized here, as the loader quantizes float audio: libsndfile's own float -> 16-bit scale
    # differs between its FLAC (x 32768) and WAV (x 32767) writers.
    sf.write(buf, to_pcm16(wav).numpy(), 16000, format=fmt, subtype="PCM_16")
    return buf.getvalue(), seconds


def check_duration(utt: Utterance, seconds: float) -> None:
    """Refuse audio much shorter or longer than its manifest says: a truncated file (or a stale
    manifest) whose transcript no longer matches the audio."""
    if abs(seconds - utt.duration) > max(0.1, 0.1 * utt.duration):
        raise AudioError(f"{utt.audio}: audio is {seconds:.2f} s but the manifest says {utt.duration:.2f} s "
                         "(truncated file, or a stale manifest?)")


def write_shards(utts: list[Utterance], out_dir: str | Path, split: str, max_per_shard: int = 2000,
                 problems: list[str] | None = None, progress: bool = True, strict: bool = False,
                 audio_format: str = "flac") -> list[Path]:
    """Write ``out_dir/{split}-000000.tar`` ... and ``{split}.index.json`` (shard names, counts, hours),
    the audio as ``audio_format`` ("flac" or "wav", see the module's docstring).

    Unreadable audio, or audio whose length disagrees with the manifest, is skipped and reported in
    ``problems`` (``strict``: raised as AudioError). Returns the shard paths.
    """
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"audio_format={audio_format!r}: expected one of {sorted(AUDIO_FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Only this split's own numbered shards: "train-*.tar" would also match "train-clean-000000.tar".
    own = re.compile(rf"{re.escape(split)}-\d{{6,}}\.tar")
    for old in out_dir.glob(f"{split}-*.tar"):
        if own.fullmatch(old.name):
            old.unlink()
    problems = [] if problems is None else problems
    shards: list[dict] = []
    writer, count, seconds = None, 0, 0.0
    keys: dict[str, str] = {}  # shard key -> the id that took it
    for utt in tqdm(utts, desc=f"shard {split}", unit="utt", disable=not progress):
        # webdataset splits keys at the first dot, so ids must not contain one.
        key = utt.id.replace(".", "_")
        try:
            if key in keys:  # two samples under one key make the whole shard unreadable
                raise AudioError(f"{utt.id}: its shard key {key!r} is taken by {keys[key]!r}; rename one of them")
            audio, actual = audio_bytes(utt, audio_format)
            check_duration(utt, actual)
        except AudioError as e:
            if strict:
                raise
            log.warning("skipped: %s", e)
            problems.append(str(e))
            continue
        if writer is None or count == max_per_shard:
            if writer is not None:
                writer.close()
                shards[-1].update(count=count, seconds=round(seconds, 2))
            path = out_dir / f"{split}-{len(shards):06d}.tar"
            shards.append({"path": path.name})
            writer, count, seconds = wds.TarWriter(str(path)), 0, 0.0
        meta = utt.to_json()
        meta["audio"] = f"{utt.id}.{audio_format}"
        keys[key] = utt.id
        writer.write({"__key__": key, audio_format: audio, "json": meta})
        count += 1
        seconds += utt.duration
    if writer is not None:
        writer.close()
        shards[-1].update(count=count, seconds=round(seconds, 2))
    index = {"split": split, "shards": shards, "num_utts": sum(s["count"] for s in shards),
             "hours": round(sum(s["seconds"] for s in shards) / 3600, 4)}
    (out_dir / f"{split}.index.json").write_text(json.dumps(index, indent=1) + "\n")
    return [out_dir / s["path"] for s in shards]


REMOTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # "pipe:", "http://", "s3://", ...: webdataset opens these


def is_remote(path: str) -> bool:
    """A URL or ``pipe:`` command, read by webdataset and not checked here."""
    return REMOTE.match(path) is not None


def expand_spec(spec: str) -> list[str]:
    """One shard spec -> shard paths or URLs, not yet checked for existence."""
    if spec.endswith(".index.json"):
        try:
            index = json.loads(Path(spec).read_text())
            return [str(Path(spec).parent / s["path"]) for s in index["shards"]]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ManifestError(f"{spec}: not a shard index ({type(e).__name__}: {e})") from None
    if "{" in spec:
        return list(wds.shardlists.expand_urls(spec))
    if is_remote(spec) or not any(c in spec for c in "*?["):  # a URL's "?" starts its query, not a glob
        return [spec]
    paths = sorted(glob.glob(spec))  # Path().glob refuses absolute patterns
    if not paths:
        raise FileNotFoundError(f"{spec}: no shards match")
    return paths


def check_local(spec: str, paths: list[str]) -> list[str]:
    """``paths`` as given; raises FileNotFoundError naming the local ones that are missing.

    A missing shard fails at once rather than training on less data with a warning.
    """
    missing = [p for p in paths if not is_remote(p) and not Path(p).is_file()]
    if paths == [spec] and missing:
        raise FileNotFoundError(f"{spec}: no such shard file")
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise FileNotFoundError(f"{spec}: {len(missing)} of {len(paths)} shards missing: {shown}")
    return paths


def resolve_shards(spec: str | list[str]) -> list[str]:
    """Shard paths from a list, a ``{split}.index.json``, a glob (absolute or relative), or a brace
    pattern; every local shard must exist (remote URLs are left to webdataset)."""
    if isinstance(spec, list):
        return [p for s in spec for p in resolve_shards(s)]
    return check_local(spec, expand_spec(spec))


@dataclass
class Sample:
    id: str
    wav: Tensor  # (S,) 16 kHz: float32, or int16 (16-bit PCM) in the training batches' stream
    text: str
    speaker: str | None


def decode_sample(raw: dict, pcm16: bool = False) -> Sample:
    """A raw tar sample (bytes per extension) -> Sample (int16 samples with ``pcm16``); raises
    AudioError naming the shard and key."""
    where = f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"
    ext = next((e for e in AUDIO_FORMATS if e in raw), None)
    if "json" not in raw or ext is None:
        raise AudioError(f"{where}: sample lacks its audio (.flac or .wav) or its .json member")
    meta = json.loads(raw["json"])
    wav = load_audio(raw[ext], name=where, pcm16=pcm16)
    return Sample(meta["id"], wav, meta["text"], meta.get("speaker"))


def shard_error(exn: Exception, shards: list[str]) -> str:
    """One line naming the shard for an error webdataset hands to its handler.

    webdataset appends ``(stream, url)`` to the exception's args, or (inside a tar) appends
    ``" @ <stream>"`` to its message; either way the shard's path is recovered.
    """
    first = str(exn.args[0]) if exn.args else type(exn).__name__
    why, _, stream = first.partition(" @ ")
    url = next((a for a in exn.args[1:] if isinstance(a, str)), None)
    if url is None:
        url = next((sh for sh in shards if f"'{sh}'" in stream), "?")
    return f"{url}: unreadable shard data ({why or type(exn).__name__})"


def shuffled(items: Iterator, bufsize: int, rng: random.Random, initial: int | None = None) -> Iterator:
    """Approximate shuffle through a buffer of up to ``bufsize`` items.

    ``initial``: items flow out once this many are in, and the buffer keeps growing to ``bufsize``
    (two in, one out), so a stream need not read a whole buffer before its first item (5,000
    LibriSpeech utterances are ~1 GB of FLAC per loader worker). None: fill the buffer first.
    """
    initial = bufsize if initial is None else max(1, min(initial, bufsize))
    it, end = iter(items), object()
    buf: list = []
    for item in it:
        buf.append(item)
        if len(buf) >= initial:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
        if len(buf) < bufsize:  # read after yielding: the first item goes out as soon as it can
            extra = next(it, end)
            if extra is not end:
                buf.append(extra)
    rng.shuffle(buf)
    yield from buf


def padded_frames(frames: int, multiple: int = 1) -> int:
    """``frames`` rounded up to a multiple of ``multiple`` (a batch's padded length, in frames)."""
    return -(-frames // multiple) * multiple


def padded_samples(samples: int, pad_to: int = 1) -> int:
    """A batch's padded length in samples for its longest utterance of ``samples``: that, or with
    ``pad_to`` > 1 the length whose feature frames (S // HOP + 1) are the longest's rounded up to a
    multiple of ``pad_to``."""
    return samples if pad_to <= 1 else padded_frames(samples // HOP + 1, pad_to) * HOP - 1


def pad_batch(samples: list[Sample], int16: bool = False, pad_to: int = 1) -> dict:
    """Samples (float32 or int16) -> {"ids", "texts", "speakers", "wav" (B, S) zero-padded, "lengths" (B,)}.

    S is the longest sample's length, or with ``pad_to`` > 1 the length whose feature frames are the
    longest sample's rounded up to a multiple of ``pad_to`` (so batch shapes repeat; see
    ``ShardBatches``). ``int16``: "wav" as 16-bit PCM (lossless for shard audio, which is 16-bit FLAC):
    half the bytes to pass from loader workers, pin and copy to the GPU; ``LogMel`` takes either.
    """
    lengths = torch.tensor([s.wav.shape[0] for s in samples], dtype=torch.long)
    longest = padded_samples(int(lengths.max()), pad_to) if samples else 0
    wav = torch.zeros(len(samples), longest, dtype=torch.int16 if int16 else torch.float32)
    for i, s in enumerate(samples):
        if int16:
            wav[i, : s.wav.shape[0]] = s.wav if s.wav.dtype == torch.int16 else to_pcm16(s.wav)
        else:
            wav[i, : s.wav.shape[0]] = s.wav / 32768 if s.wav.dtype == torch.int16 else s.wav
    return {"ids": [s.id for s in samples], "texts": [s.text for s in samples],
            "speakers": [s.speaker for s in samples], "wav": wav, "lengths": lengths}


def bucket_batches(samples: Iterator[Sample], max_frames: int, max_batch: int, boundaries: list[float],
                   first_max_frames: int | None = None, pad_to: int = 1) -> Iterator[list[Sample]]:
    """Group samples of similar duration so that batch size x longest frames <= ``max_frames``
    (``first_max_frames`` for the first batch, if given); with ``pad_to``, the longest frames as
    ``pad_batch`` pads them (rounded up to a multiple of ``pad_to``).

    ``boundaries`` are bucket edges in seconds. An utterance longer than ``max_frames`` alone is
    still yielded, as a batch of one.
    """
    buckets: list[list[Sample]] = [[] for _ in range(len(boundaries) + 1)]
    longest = [0] * len(buckets)
    budget = min(max_frames, first_max_frames or max_frames)

    def full(batch: list[Sample], longest: int, frames: int) -> bool:
        return bool(batch) and ((len(batch) + 1) * max(longest, frames) > budget or len(batch) >= max_batch)

    for s in samples:
        frames = s.wav.shape[0] // HOP + 1
        k = sum(frames * HOP / 16000 >= b for b in boundaries)
        frames = padded_frames(frames, pad_to)
        if full(buckets[k], longest[k], frames):
            yield buckets[k]
            buckets[k], longest[k] = [], 0
            budget = max_frames
        buckets[k].append(s)
        longest[k] = max(longest[k], frames)
    # What is left in the buckets, packed together by length: one part-filled batch per bucket would
    # be up to num_buckets small, slow steps at the end of every loader worker's stream.
    batch, longest_left = [], 0
    for s in sorted((s for b in buckets for s in b), key=lambda s: s.wav.shape[0]):
        frames = padded_frames(s.wav.shape[0] // HOP + 1, pad_to)
        if full(batch, longest_left, frames):
            yield batch
            batch, longest_left = [], 0
        batch.append(s)
        longest_left = max(longest_left, frames)
    if batch:
        yield batch


def bucket_edges(max_duration: float, num_buckets: int, min_duration: float = 1.0) -> list[float]:
    """Geometric bucket edges between ``min_duration`` and ``max_duration`` seconds."""
    if num_buckets <= 1:
        return []
    ratio = (max_duration / min_duration) ** (1 / num_buckets)
    return [min_duration * ratio**i for i in range(1, num_buckets)]


class ShardBatches(IterableDataset):
    """Padded batches streamed from shards; give to a DataLoader with ``batch_size=None``.

    Shards are shuffled per epoch (``set_epoch``), split by rank then by worker. Unreadable samples
    and whole unreadable shards are logged and skipped; ``skip_batches`` drops the first batches of
    this worker's stream (used to resume mid-epoch). ``pad_to`` > 1 pads each batch to a multiple of
    that many feature frames: fewer distinct batch shapes, for libraries that set work up once per
    shape (cuDNN, cuFFT), at the cost of more padding.
    """

    def __init__(self, shards: list[str], max_frames: int, max_batch: int, num_buckets: int = 10,
                 max_duration: float = 30.0, shuffle_buffer: int = 1000, seed: int = 0, rank: int = 0,
                 world: int = 1, shuffle: bool = True, pad_to: int = 1):
        super().__init__()
        self.pad_to = pad_to
        self.shards = list(shards)
        self.max_frames, self.max_batch = max_frames, max_batch
        self.edges = bucket_edges(max_duration, num_buckets)
        self.max_duration = max_duration
        self.shuffle_buffer, self.seed, self.shuffle = shuffle_buffer, seed, shuffle
        self.rank, self.world = rank, world
        self.epoch = 0
        self.skip_batches = 0
        self.problems: list[str] = []
        # Applied to each padded batch in the loader worker (asr.targets.Labeler: tokenizing and
        # leaving out what CTC cannot train on, off the training process's critical path).
        self.label: Callable[[dict], dict] | None = None

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def check_split(self, num_workers: int) -> None:
        """Warn when some rank's loader workers would get no shard at all (they idle, and ranks may
        see very different amounts of data)."""
        slots = self.world * max(1, num_workers)
        if len(self.shards) < slots:
            log.warning("%d shards for %d ranks x %d workers: some workers get no data; write more, smaller shards "
                        "(asr shard --max-per-shard)", len(self.shards), self.world, max(1, num_workers))

    def my_shards(self, worker: int, num_workers: int) -> list[str]:
        """This rank's and worker's share of the epoch's shard order."""
        order = list(self.shards)
        if self.shuffle:
            random.Random(self.seed + 1000 * self.epoch).shuffle(order)
        mine = order[self.rank :: self.world]
        return mine[worker::num_workers]

    def samples(self, shards: list[str], rng: random.Random | None = None, pcm16: bool = False) -> Iterator[Sample]:
        """Decoded samples of ``shards`` (int16 with ``pcm16``), shuffled through a ``shuffle_buffer``
        with ``rng`` if given; each one skipped is recorded in ``self.problems``."""

        reported: set[str] = set()

        def on_error(exn: Exception) -> bool:
            msg = shard_error(exn, shards)
            if msg not in reported:  # a torn tar is reported twice by webdataset (member, then stream)
                reported.add(msg)
                log.warning("skipped: %s", msg)
                self.problems.append(msg)
            return True

        raw = wds.tariterators.tarfile_samples(({"url": u} for u in shards), handler=on_error)
        if rng is not None:
            # Shuffle the FLAC bytes, not decoded audio: 5000 utterances of 12 s are ~1 GB compressed
            # but ~4 GB as float32, in every loader worker.
            raw = shuffled(raw, self.shuffle_buffer, rng, initial=min(200, self.shuffle_buffer))
        for r in raw:
            try:
                s = decode_sample(r, pcm16)
            except (AudioError, ValueError, KeyError) as e:
                log.warning("skipped: %s", e)
                self.problems.append(str(e))
                continue
            if s.wav.shape[0] / 16000 > self.max_duration:
                self.problems.append(f"{s.id}: longer than max_duration={self.max_duration:g} s")
                continue
            yield s

    def __iter__(self) -> Iterator[dict]:
        """Padded batches (see ``pad_batch``; then ``label``'s, if set), each with "problems": samples
        skipped since the last batch."""
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        self.problems: list[str] = []
        rng = random.Random(self.seed + 1000 * self.epoch + 7 * worker + 100003 * self.rank)
        stream = self.samples(self.my_shards(worker, num_workers), rng if self.shuffle else None, pcm16=True)
        # A small first batch: a full one waits until one bucket holds max_frames of audio (an hour
        # at the large config), which kept an H100 idle for 14-15 s at the start of every epoch.
        batches = bucket_batches(stream, self.max_frames, self.max_batch, self.edges,
                                 first_max_frames=self.max_frames // 8, pad_to=self.pad_to)
        if self.shuffle:
            # Buckets fill at different rates; a small shuffle keeps lengths from drifting within the epoch.
            # (initial=1: waiting for eight full batches before the first would be eight hours of
            # audio decoded per worker at the large config)
            batches = shuffled(batches, 8, rng, initial=1)
        # A DataLoader takes batches from its workers in turn, so worker w produced every
        # num_workers-th of the batches already consumed.
        skip = max(0, -(-(self.skip_batches - worker) // num_workers))
        for i, b in enumerate(batches):
            if i >= skip:
                batch = pad_batch(b, int16=True, pad_to=self.pad_to)
                if self.label is not None:
                    batch = self.label(batch)
                batch["problems"], self.problems = self.problems, []
                yield batch


def shard_metadata(shards: list[str]) -> Iterator[dict]:
    """The JSON record of every sample in ``shards``, without decoding audio.

    A shard that cannot be read (truncated, not a tar) is logged and what could be read of it is kept;
    the training loop reports such shards when it streams them.
    """
    for path in shards:
        try:
            with tarfile.open(path) as tf:
                for member in tf:
                    if member.name.endswith(".json"):
                        yield json.loads(tf.extractfile(member).read())
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            log.warning("%s: unreadable shard (%s)", path, e)
