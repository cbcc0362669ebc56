"""asr.data.manifest: JSONL round trip; every bad line skipped with its line number, or raised with strict."""
from __future__ import annotations

import json
import os
import re

import pytest

from asr.data.manifest import ManifestError, Utterance, read_manifest, write_manifest
from tests.conftest import write_audio


@pytest.fixture
def audio_files(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / "audio" / f"u{i}.flac"
        write_audio(p, 0.1, seed=i)
        paths.append(p)
    return paths


def test_round_trip(tmp_path, audio_files):
    utts = [Utterance("a-1", str(audio_files[0]), "HELLO THERE", 1.25, "spk1"),
            Utterance("a-2", str(audio_files[1]), "GOOD BYE", 0.5)]
    path = tmp_path / "m.jsonl"
    assert write_manifest(path, utts) == 2
    back = read_manifest(path, strict=True)
    assert back == utts
    assert back[1].speaker is None
    assert "speaker" not in json.loads(path.read_text().splitlines()[1])


def test_relative_paths_are_relative_to_the_manifest_folder(tmp_path, audio_files, monkeypatch):
    utts = [Utterance("x", str(audio_files[2]), "WORDS", 2.0, "s")]
    path = tmp_path / "data" / "m.jsonl"
    write_manifest(path, utts, relative=True)
    stored = json.loads(path.read_text())["audio"]
    assert stored == "../audio/u2.flac"
    monkeypatch.chdir(audio_files[0].parent)  # the working folder does not matter
    (u,) = read_manifest(path, strict=True)
    assert os.path.isabs(u.audio) and os.path.samefile(u.audio, audio_files[2])


BAD_LINES = {
    "malformed": ('{"id": "b", "audio": "audio/u0.flac", "text": "X", ', "malformed JSON"),
    "not_object": ('["id", "b"]', "expected a JSON object"),
    "missing_text": ('{"id": "b", "audio": "audio/u0.flac", "duration": 1.0}', "missing field 'text'"),
    "missing_duration": ('{"id": "b", "audio": "audio/u0.flac", "text": "HI"}', "missing field 'duration'"),
    "empty_text": ('{"id": "b", "audio": "audio/u0.flac", "text": "   ", "duration": 1.0}', "empty transcript"),
    "negative_duration": ('{"id": "b", "audio": "audio/u0.flac", "text": "HI", "duration": -1.0}', "invalid duration"),
    "zero_duration": ('{"id": "b", "audio": "audio/u0.flac", "text": "HI", "duration": 0}', "invalid duration"),
    "absurd_duration": ('{"id": "b", "audio": "audio/u0.flac", "text": "HI", "duration": 1e9}', "invalid duration"),
    "string_duration": ('{"id": "b", "audio": "audio/u0.flac", "text": "HI", "duration": "2.0"}', "invalid duration"),
    "bool_duration": ('{"id": "b", "audio": "audio/u0.flac", "text": "HI", "duration": true}', "invalid duration"),
    "non_string_id": ('{"id": 7, "audio": "audio/u0.flac", "text": "HI", "duration": 1.0}', "'id' must be"),
    "duplicate_id": ('{"id": "a", "audio": "audio/u1.flac", "text": "HI", "duration": 1.0}', "duplicate id 'a'"),
    "missing_audio": ('{"id": "b", "audio": "audio/nope.flac", "text": "HI", "duration": 1.0}', "audio file not found"),
}
GOOD = '{"id": "a", "audio": "audio/u0.flac", "text": "HELLO", "duration": 1.0}'
GOOD2 = '{"id": "c", "audio": "audio/u2.flac", "text": "BYE", "duration": 0.1, "speaker": 12}'


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_is_skipped_with_its_line_number(tmp_path, audio_files, case):
    line, message = BAD_LINES[case]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join([GOOD, "", line, GOOD2]) + "\n")  # the bad line is line 3
    problems: list[str] = []
    utts = read_manifest(path, problems=problems)
    assert [u.id for u in utts] == ["a", "c"]
    assert utts[1].speaker == "12"
    assert len(problems) == 1
    assert f"{path}:3:" in problems[0]
    assert message in problems[0]


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_raises_with_strict(tmp_path, audio_files, case):
    line, message = BAD_LINES[case]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join([GOOD, line, GOOD2]) + "\n")
    with pytest.raises(ManifestError, match=re.escape(f"{path}:2:")) as exc:
        read_manifest(path, strict=True)
    assert message in str(exc.value)


def test_every_problem_of_a_manifest_is_reported(tmp_path, audio_files):
    lines = [GOOD] + [BAD_LINES[c][0] for c in sorted(BAD_LINES)] + [GOOD2]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    problems: list[str] = []
    utts = read_manifest(path, problems=problems)
    assert [u.id for u in utts] == ["a", "c"]
    assert len(problems) == len(BAD_LINES)
    assert [int(p.split(f"{path}:")[1].split(":")[0]) for p in problems] == list(range(2, 2 + len(BAD_LINES)))


def test_missing_audio_is_accepted_without_check_audio(tmp_path, audio_files):
    path = tmp_path / "m.jsonl"
    path.write_text(BAD_LINES["missing_audio"][0] + "\n")
    (u,) = read_manifest(path, strict=True, check_audio=False)
    assert u.audio == str(tmp_path / "audio" / "nope.flac")


def test_missing_manifest_is_an_error(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "none.jsonl")
