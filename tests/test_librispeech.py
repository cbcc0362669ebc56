"""asr.data.librispeech on a miniature corpus in LibriSpeech's exact layout; asr.data.synth's text and voices."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from asr.data import synth
from asr.data.librispeech import prepare_librispeech
from asr.data.manifest import read_manifest, write_manifest
from asr.data.synth import DEFAULT_TEST_VOICES, SynthesisError, Voice, extract_sentences, train_voices
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


def test_a_recording_without_a_transcript_line_is_reported(tmp_path):
    expected = build_corpus(tmp_path)
    stray = tmp_path / "train-clean-mini" / "19" / "227" / "19-227-0009.flac"
    write_audio(stray, 0.3)
    problems: list[str] = []
    utts = prepare_librispeech(tmp_path, problems, progress=False)
    assert [u.id for u in utts] == sorted(expected)
    assert problems == [f"{stray}: no line for it in 19-227.trans.txt"]


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


# --- synthetic corpora (asr.data.synth) are written in the same layout -----------------------------------


@pytest.mark.parametrize("text, kept", [
    ("He said hello to me.", ["He said hello to me."]),
    ("Why would you say that? I am a man who walks.", ["Why would you say that?", "I am a man who walks."]),
    ("I have 3 cats at home.", []),                 # digits are read as words the transcript lacks
    ("The NASA probe flew far.", []),               # acronyms are spelled out
    ("Email me at x@y.com now.", []),               # symbols
    ("It is fine -- really fine.", []),             # dashes mark attributions
    ("Go home.", []),                               # fewer than 3 words
    ("A b c d e f g.", []),                         # single letters other than A and I
    (" ".join(["word"] * 17) + ".", []),            # more than 16 words
])
def test_extract_sentences_keeps_only_what_a_synthesizer_reads_verbatim(text, kept):
    assert extract_sentences(text) == kept


def test_extract_sentences_splits_fortune_entries_and_drops_attributions():
    raw = "First entry is here now.\n\t-- Somebody Famous\n%\nSecond entry\nspans two lines.\n%\n"
    assert extract_sentences(raw) == ["First entry is here now.", "Second entry spans two lines."]


def test_extract_sentences_ends_a_sentence_at_a_blank_line_not_at_a_line_break():
    """Before: a plain text file without '%' lines was one entry, read as one run-on sentence."""
    raw = "Hello there my good friend\n\nHow are you doing today\nI am fine thank you\n"
    assert extract_sentences(raw) == ["Hello there my good friend", "How are you doing today I am fine thank you"]
    raw = "The red cat sat down.\r\nThe big dog ran off.\r\n \r\nA title of a poem\r\nHere it begins.\r\n"
    assert extract_sentences(raw) == ["The red cat sat down.", "The big dog ran off.",
                                      "A title of a poem Here it begins."]


needs_engines = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("flite") is None,
                                   reason="espeak-ng and flite not installed")


def corpus_text(monkeypatch, tmp_path, num_sentences: int, **kwargs) -> dict[str, list[str]]:
    """make_corpus on ``num_sentences`` sentences with rendering replaced by a record of the text
    each split gets (and ``lm_text``: the LM text's lines)."""
    got: dict[str, list[str]] = {}

    def record(out, voices, sentences, *args, **kw):
        got[out.name] = [synth.normalize(s) for s in sentences]
        return []

    monkeypatch.setattr(synth, "write_split", record)
    tmp_path.mkdir(exist_ok=True)
    text = tmp_path / "text.txt"
    words = ["red", "big", "old", "shy", "fat", "sly"][:num_sentences]
    text.write_text("".join(f"The {w} cat sat on the mat.\n" for w in words))
    (tmp_path / "out").mkdir()
    synth.make_corpus(tmp_path / "out", text_files=[text], num_train_voices=3, **kwargs)
    got["lm_text"] = (tmp_path / "out" / "lm_text.txt").read_text().splitlines()
    return got


@needs_engines
def test_short_text_never_puts_held_out_sentences_in_training(monkeypatch, tmp_path):
    """Before: with no sentence left for training, training took all of them, test and dev ones
    included, and lm_text.txt was empty; now the one training sentence is reused."""
    got = corpus_text(monkeypatch, tmp_path, 4, num_train=5, num_test=2, num_dev=1)
    assert len(got["test"]) == 2 and len(got["dev"]) == 1 and len(got["train"]) == 5
    assert not set(got["train"]) & set(got["test"] + got["dev"])
    assert set(got["train"]) == set(got["lm_text"]) and len(got["lm_text"]) == 1
    with pytest.raises(SynthesisError, match="3 usable sentences, but 4 are needed"):
        corpus_text(monkeypatch, tmp_path / "b", 3, num_train=5, num_test=2, num_dev=1)


@needs_engines
@pytest.mark.parametrize("voice, offered", [("flite:nosuch", "kal"), ("espeak:en-us+typo", "m1"),
                                            ("espeak:en-us+annie", "Annie"), ("espeak:xx-yy+m1", "en-us")])
def test_unknown_voices_are_an_error_not_a_fallback(monkeypatch, tmp_path, voice, offered):
    """Before: flite spoke an unknown voice as kal (a training voice), espeak-ng an unknown variant
    as the bare language."""
    with pytest.raises(SynthesisError, match=rf"{re.escape(voice)}.*{offered}"):
        corpus_text(monkeypatch, tmp_path, 6, num_train=2, num_test=1, test_voices=[voice])
    synth.check_voices([Voice.parse(v) for v in DEFAULT_TEST_VOICES + ["flite:slt", "espeak:EN-US+Annie", "espeak:en"]])


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_every_training_voice_is_a_real_variant_and_never_a_test_voice():
    """Before: ESPEAK_VARIANTS named "annie", which espeak-ng (case-sensitive) lacks: every LANG+annie
    speaker was the bare language, en-gb-x-rp+annie the test language's voice."""
    missing = set(synth.ESPEAK_VARIANTS) - synth.espeak_variants()
    assert not missing, f"not variants of the installed espeak-ng: {sorted(missing)}"
    assert set(synth.ESPEAK_LANGS) <= synth.espeak_languages()

    def speak(voice: str) -> bytes:  # the program: the library's audio varies a little from call to call
        return subprocess.run(["espeak-ng", "-v", voice, "--stdout"], input=b"Hello there.", capture_output=True,
                              check=True).stdout

    bare = speak("en-us")
    same = [v for v in synth.ESPEAK_VARIANTS if speak(f"en-us+{v}") == bare]
    assert not same, f"variants espeak-ng reads as none: {same}"
    test = [Voice.parse(v) for v in DEFAULT_TEST_VOICES + ["espeak:en-gb-x-rp"]]
    test_keys = {(v.name.partition("+")[0].lower(), v.name.partition("+")[2]) for v in test}
    for v in train_voices(1000, test, seed=0, use_flite=False):
        lang, _, variant = v.name.partition("+")
        assert variant in synth.espeak_variants() and (lang.lower(), variant) not in test_keys, v


def test_voice_parse():
    assert Voice.parse("espeak:en-us+m3") == Voice("espeak", "en-us+m3", 1.0, 1.0)
    assert Voice.parse("flite:slt@1.1,0.9") == Voice("flite", "slt", 1.1, 0.9)
    assert Voice.parse(Voice("espeak", "en-gb+f2", 0.9, 1.25).describe()) == Voice("espeak", "en-gb+f2", 0.9, 1.25)
    for bad in ("espeak", "festival:kal", "espeak:", ":m3"):
        with pytest.raises(SynthesisError, match="expected"):
            Voice.parse(bad)


def test_train_voices_never_use_a_test_voice_variant():
    test = [Voice.parse(v) for v in DEFAULT_TEST_VOICES + ["flite:rms"]]
    voices = train_voices(40, test, seed=3, use_flite=True)
    assert len(voices) == 40 and len({(v.engine, v.name) for v in voices}) == 40
    banned = {v.name.split("+")[-1] for v in test if v.engine == "espeak"}
    assert not any(v.engine == "espeak" and v.name.split("+")[-1] in banned for v in voices)
    assert not any(v.engine == "flite" and v.name == "rms" for v in voices)
    assert train_voices(40, test, seed=3) == voices, "the same seed gives the same speakers"
    assert all(v.engine == "espeak" for v in train_voices(10, test, seed=3, use_flite=False))


# --- espeak-ng through its library (asr.data.espeak) --------------------------------------------------

ESPEAK_PROBE = """
import io, subprocess, sys, numpy as np, soundfile as sf
from asr.data import espeak
text = "-- Why would you say that? I am a man who walks."
for voice in sys.argv[1:]:
    lib = espeak.engine().speak(text, voice, 150, 60)
    cli = subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-p", "60", "--stdout"], input=text.encode(),
                         capture_output=True, check=True).stdout
    cli = sf.read(io.BytesIO(cli), dtype="int16")[0]
    # the program pads the end with silence the library leaves out
    ok = len(lib) <= len(cli) and np.array_equal(lib, cli[:len(lib)]) and not cli[len(lib):].any()
    print(voice, "same" if ok else f"differs: {len(lib)} vs {len(cli)} samples")
"""


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
@pytest.mark.parametrize("voice", ["en-us+m3", "en-gb+f2", "en-gb-x-rp+klatt"])
def test_espeak_library_speaks_as_the_program_does(voice):
    """The first sentence of a fresh process is sample for sample the program's (en-gb is a
    language, not a voice name: the library must fall back as the program does)."""
    out = subprocess.run([sys.executable, "-c", ESPEAK_PROBE, voice], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{voice} same"


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_espeak_library_keeps_utterances_apart_and_rejects_unknown_voices():
    """Nothing of one sentence leaks into the next: a short sentence after a long one is as long
    as before (within the engine's small random jitter); an unknown voice is a clear error."""
    from asr.data import espeak
    from asr.data.synth import synthesize

    lib = espeak.engine()
    short = lib.speak("Hello there.", "en-us+m1", 150, 50)
    lib.speak("I am a man who walks along the river every single day of the year.", "en-gb+f3", 120, 70)
    again = lib.speak("Hello there.", "en-us+m1", 150, 50)
    assert abs(len(again) - len(short)) < 0.02 * len(short) and np.abs(again).max() > 1000
    with pytest.raises(SynthesisError, match="xx-yy"):
        synthesize(Voice("espeak", "xx-yy+m1"), "Hello there.", 1.0, 1.0)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_synthesized_corpus_is_the_same_for_any_number_of_processes(tmp_path, monkeypatch):
    """libespeak-ng carries state from one sentence to the next, so the audio would depend on which
    worker rendered what; each chunk of one voice's sentences runs in a fresh worker instead."""
    import soundfile as sf

    from asr.data import synth

    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"The {w} cat sat on the mat today." for w in
                              ["red", "big", "old", "shy", "fat", "sly", "odd", "wet", "dry", "hot", "tan", "mad", "sad",
                               "new", "bad", "tall", "small", "calm", "cold", "warm", "kind", "wild", "lost", "lazy",
                               "young", "proud"]) + "\n")
    monkeypatch.setattr(synth, "CHUNK", 2)
    audio = []
    for jobs in (1, 3):
        out = tmp_path / f"j{jobs}"
        synth.make_corpus(out, num_train=24, num_test=2, text_files=[text], num_train_voices=2, seed=5, jobs=jobs,
                          use_flite=False)
        files = sorted(out.rglob("*.flac"))
        assert len(files) == 26
        audio.append({f.relative_to(out): sf.read(f, dtype="int16")[0] for f in files})
    assert audio[0].keys() == audio[1].keys()
    assert all(np.array_equal(audio[0][k], audio[1][k]) for k in audio[0])


def test_voice_chunks_keep_each_voice_in_order_and_ignore_the_process_count():
    from asr.data.synth import voice_chunks

    work = [("a", 0), ("b", 1), ("a", 2), ("a", 3), ("b", 4), ("a", 5), ("a", 6)]
    assert voice_chunks(work, size=2) == [[("a", 0), ("a", 2)], [("a", 3), ("a", 5)], [("a", 6)], [("b", 1), ("b", 4)]]
    assert voice_chunks(work, size=3) == [[("a", 0), ("a", 2), ("a", 3)], [("a", 5), ("a", 6)], [("b", 1), ("b", 4)]]
