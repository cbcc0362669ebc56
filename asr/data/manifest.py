"""Manifests: JSON Lines, one utterance a line — the contract between data preparation and training.

``{"id": str, "audio": path (absolute, or relative to the manifest's folder), "text": str,
"duration": seconds, "speaker": str (optional)}``. Lines are validated on load; each problem is
named with the file and line number, and a bad line is skipped (or raised with ``strict``).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from asr.files import atomic_file

log = logging.getLogger(__name__)

MAX_DURATION = 4 * 3600.0  # seconds; anything longer is almost certainly a broken header


class ManifestError(ValueError):
    pass


@dataclass
class Utterance:
    id: str
    audio: str
    text: str
    duration: float
    speaker: str | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        if d["speaker"] is None:
            del d["speaker"]
        return d


def _validate(obj: object, where: str, check_audio: bool, base: Path, need_text: bool = True) -> Utterance:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "audio", "text", "duration") if need_text else ("id", "audio", "duration"):
        if key not in obj:
            raise ManifestError(f"{where}: missing field '{key}'")
    uid, audio, text, dur = obj["id"], obj["audio"], obj.get("text", ""), obj["duration"]
    if not isinstance(uid, str) or not uid:
        raise ManifestError(f"{where}: 'id' must be a non-empty string")
    if not isinstance(audio, str) or not audio:
        raise ManifestError(f"{where}: 'audio' must be a non-empty path")
    if not isinstance(text, str) or (need_text and not text.strip()):
        raise ManifestError(f"{where}: utterance {uid!r} has an empty transcript")
    if isinstance(dur, bool) or not isinstance(dur, (int, float)) or not (0 < dur <= MAX_DURATION):
        raise ManifestError(f"{where}: utterance {uid!r} has an invalid duration {dur!r}")
    path = audio if os.path.isabs(audio) else str(base / audio)
    if check_audio and not os.path.isfile(path):
        raise ManifestError(f"{where}: audio file not found: {path}")
    speaker = obj.get("speaker")
    return Utterance(uid, path, text, float(dur), None if speaker is None else str(speaker))


def read_manifest(path: str | Path, strict: bool = False, check_audio: bool = True,
                  problems: list[str] | None = None, need_text: bool = True) -> list[Utterance]:
    """Read and validate a manifest; audio paths come back absolute.

    Bad lines (malformed JSON, missing fields, empty text, absurd duration, missing audio, duplicate
    id) are logged and skipped, and appended to ``problems`` if given; ``strict`` raises instead.
    ``need_text=False``: untranscribed audio, where "text" may be empty or absent.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    base = path.resolve().parent
    utts: list[Utterance] = []
    seen: set[str] = set()
    # Bytes, decoded line by line: one line that is not UTF-8 is a bad line, not a crash of the file.
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ManifestError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                        f"{e.start + 1})") from None
                if not line.strip():
                    continue
                try:
                    # Without its newline, a torn line reads "Unterminated string", not "Invalid control character".
                    obj = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as e:
                    why = e.msg.removesuffix(" at")
                    raise ManifestError(f"{where}: malformed JSON ({why} at column {e.colno})") from None
                utt = _validate(obj, where, check_audio, base, need_text)
                if utt.id in seen:
                    raise ManifestError(f"{where}: duplicate id {utt.id!r}")
            except ManifestError as e:
                if strict:
                    raise
                log.warning("skipped: %s", e)
                if problems is not None:
                    problems.append(str(e))
                continue
            seen.add(utt.id)
            utts.append(utt)
    return utts


def write_manifest(path: str | Path, utts: Iterable[Utterance], relative: bool = False) -> int:
    """Write utterances as JSONL (atomically); ``relative`` stores audio paths relative to the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    count = 0
    with atomic_file(path) as f:
        for u in utts:
            d = u.to_json()
            if relative:
                d["audio"] = os.path.relpath(os.path.abspath(u.audio), base)
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
            count += 1
    return count
