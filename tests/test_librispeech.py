"""asr.data.librispeech on a miniature corpus in LibriSpeech's exact layout."""
from __future__ import annotations

import pytest

from asr.data.librispeech import prepare_librispeech
from asr.data.manifest import read_manifest, write_manifest
from tests.conftest import write_audio

# speaker -> chapter -> [(utterance number, seconds, transcript as LibriSpeech writes it)]
CORPUS = {
    "19": {"198": [(0, 0.50, "NORTHANGER ABBEY"), (1, 0.73, "THIS LITTLE WORK WAS FINISHED IN THE YEAR")],
           "227": [(0, 0.31, "IT'S A FINE DAY"), (3, 0.62, "AND SO IT WENT ON")]},
    "26": {"495": [(0, 0.44, "CHAPTER ONE"), (1, 0.25, "MISSUS RACHEL LYNDE IS SURPRISED")],
           "496": [(2, 0.81, "HE HAD NO TIME TO LOSE"), (10, 0.12, "YES")]},
}


def build_corpus(root, subset="train-clean-mini", drop=()):
    """Write ROOT/subset/SPK/CH/SPK-CH-NNNN.flac (16 kHz FLAC) and SPK-CH.trans.txt; ``drop``: ids without audio."""
    expected = {}
    for spk, chapters in CORPUS.items():
        for ch, utts in chapters.items():
            folder = root / subset / spk / ch
            lines = []
            for n, sec, text in utts:
                uid = f"{spk}-{ch}-{n:04d}"
                lines.append(f"{uid} {text}")
                if uid not in drop:
                    write_audio(folder / f"{uid}.flac", sec, seed=n, subtype="PCM_16")
                    expected[uid] = (text, spk, sec, folder / f"{uid}.flac")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{spk}-{ch}.trans.txt").write_text("\n".join(lines) + "\n")
    return expected


def test_prepare_gives_ids_texts_speakers_durations(tmp_path):
    expected = build_corpus(tmp_path)
    problems: list[str] = []
    utts = prepare_librispeech(tmp_path, problems, progress=False)
    assert problems == []
    assert [u.id for u in utts] == sorted(expected)
    assert len(utts) == 8
    for u in utts:
        text, spk, sec, path = expected[u.id]
        assert u.text == text
        assert u.speaker == spk
        assert u.duration == pytest.approx(sec, abs=1e-3)
        assert u.audio == str(path.resolve())


def test_prepare_normalises_transcripts(tmp_path):
    folder = tmp_path / "1" / "2"
    write_audio(folder / "1-2-0000.flac", 0.2)
    (folder / "1-2.trans.txt").write_text("1-2-0000 Well, it's  café-time!\n")
    (u,) = prepare_librispeech(tmp_path, progress=False)
    assert u.text == "WELL IT'S CAFE TIME"


def test_missing_flac_is_skipped_and_reported(tmp_path):
    expected = build_corpus(tmp_path, drop={"26-496-0002", "19-198-0001"})
    problems: list[str] = []
    utts = prepare_librispeech(tmp_path, problems, progress=False)
    assert [u.id for u in utts] == sorted(expected)
    assert len(utts) == 6
    assert len(problems) == 2
    joined = "\n".join(problems)
    assert "26-496-0002.flac" in joined and "19-198-0001.flac" in joined
    assert "26-496.trans.txt:1" in joined and "19-198.trans.txt:2" in joined


def test_empty_and_duplicate_transcripts_are_reported(tmp_path):
    folder = tmp_path / "7" / "8"
    for i in range(2):
        write_audio(folder / f"7-8-000{i}.flac", 0.2, seed=i)
    (folder / "7-8.trans.txt").write_text("7-8-0000 HELLO\n7-8-0001 ...\n7-8-0000 HELLO AGAIN\n")
    problems: list[str] = []
    utts = prepare_librispeech(tmp_path, problems, progress=False)
    assert [(u.id, u.text) for u in utts] == [("7-8-0000", "HELLO")]
    assert len(problems) == 2
    assert "empty transcript" in problems[0] and "duplicate id" in problems[1]


def test_manifest_from_prepare_reads_back(tmp_path):
    build_corpus(tmp_path / "corpus")
    utts = prepare_librispeech(tmp_path / "corpus", progress=False)
    write_manifest(tmp_path / "m.jsonl", utts)
    assert read_manifest(tmp_path / "m.jsonl", strict=True) == utts


def test_folder_without_transcripts_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="trans.txt"):
        prepare_librispeech(tmp_path / "empty", progress=False)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        prepare_librispeech(tmp_path / "absent", progress=False)
