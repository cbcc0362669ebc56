"""LibriSpeech layout -> manifest.

The layout: ``ROOT/[subset/]speaker/chapter/speaker-chapter.trans.txt`` with one line per
utterance (``ID TRANSCRIPT``) and the audio beside it as ``ID.flac``. Any folder holding such
chapters works (one subset, several, or the whole corpus).
"""
from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from asr.audio import AudioError, audio_duration
from asr.data.manifest import Utterance
from asr.text import normalize

log = logging.getLogger(__name__)


def find_transcripts(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    return sorted(root.rglob("*.trans.txt"))


def prepare_librispeech(root: str | Path, problems: list[str] | None = None,
                        progress: bool = True, strict: bool = False) -> list[Utterance]:
    """All utterances under ``root`` (sorted by id), text normalised; bad entries skipped and reported
    (``strict``: the first one is raised as AudioError)."""
    problems = [] if problems is None else problems
    transcripts = find_transcripts(root)
    if not transcripts:
        raise FileNotFoundError(f"{root}: no *.trans.txt files found (is this a LibriSpeech-layout folder?)")
    utts: list[Utterance] = []
    seen: set[str] = set()
    for trans in tqdm(transcripts, desc="prepare", unit="chapter", disable=not progress):
        listed: set[str] = set()
        for n, line in enumerate(trans.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            listed.add(uid)
            where = f"{trans}:{n}"
            text = normalize(text)
            audio = trans.parent / f"{uid}.flac"
            try:
                if not text:
                    raise ValueError(f"{where}: utterance {uid} has an empty transcript")
                if uid in seen:
                    raise ValueError(f"{where}: duplicate id {uid}")
                if not audio.is_file():
                    raise ValueError(f"{where}: audio file not found: {audio}")
                duration = audio_duration(audio)
                if duration <= 0:
                    raise ValueError(f"{audio}: zero-length audio")
            except (ValueError, AudioError) as e:
                if strict:
                    raise AudioError(str(e)) from None
                log.warning("skipped: %s", e)
                problems.append(str(e))
                continue
            seen.add(uid)
            utts.append(Utterance(uid, str(audio.resolve()), text, round(duration, 3), uid.split("-")[0]))
        # A recording with no transcript line would be left out without a word.
        for audio in sorted(trans.parent.glob("*.flac")):
            if audio.stem not in listed:
                e = f"{audio}: no line for it in {trans.name}"
                if strict:
                    raise AudioError(e)
                log.warning("skipped: %s", e)
                problems.append(e)
    return sorted(utts, key=lambda u: u.id)
