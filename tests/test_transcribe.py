"""asr.transcribe: inputs, bounded windows, seam merging, word timestamps, writers, skip-done, bad files.

Most tests use ``CodedModel``, a stand-in recognizer that reads token ids written into the audio
itself (one id per 40 ms output frame), so the true words and their times are known exactly and
window seams can be checked for lost or doubled words. A tiny random package covers the real path.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.cli import main
from asr.decode.greedy import GreedyDecoder
from asr.decode.types import Hypothesis
from asr.model import subsampled_lengths
from asr.text import CharTokenizer
from asr.transcribe import (InputFile, WindowWords, Word, align_words, collect_inputs, format_timestamp, iter_windows,
                            merge_windows, run, subtitle_cues, to_json, to_srt, to_vtt, transcribe_files)
from tests.conftest import write_audio

FRAME = 640  # samples per 40 ms output frame at 16 kHz
SCALE = 64.0  # a frame holding token id k has samples k / SCALE


class CodedModel:
    """Recognizer stand-in: output frame t of a window is the token id coded at its middle sample."""

    def __init__(self) -> None:
        self.tokenizer = CharTokenizer()

    def log_probs(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_len = subsampled_lengths(lengths // 160 + 1)
        T, V = int(out_len.max()), self.tokenizer.vocab_size
        centre = torch.arange(T) * FRAME + FRAME // 2
        ids = torch.zeros(wav.shape[0], T, dtype=torch.long)
        for b in range(wav.shape[0]):
            ok = centre < lengths[b]
            ids[b, ok] = (wav[b, centre[ok]] * SCALE).round().long().clamp(0, V - 1)
        logits = torch.full((wav.shape[0], T, V), -12.0).scatter_(2, ids[..., None], 0.0)
        return logits.log_softmax(-1), out_len


def coded_speech(words: list[str], rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Audio coding ``words`` for CodedModel: each letter one frame then a blank, "|" after each word,
    then 2-8 frames of silence. Returns the samples and each word's (text, start s, end s)."""
    tok = CharTokenizer()
    frames: list[int] = [0] * 3
    times = []
    for w in words:
        start = len(frames)
        for c in w:
            frames += [tok.encode(c)[0], 0]
        times.append((w, start * 0.04, (len(frames) - 1) * 0.04))
        frames += [1] + [0] * int(rng.integers(2, 9))
    return np.repeat(np.array(frames, dtype=np.float32) / SCALE, FRAME), times


VOCAB = ["ONE", "TWO", "THREE", "FOUR", "FIVE", "SEVEN", "EIGHT", "NINE", "HELLO", "WORLD", "SPEECH", "A"]


@pytest.fixture(scope="module")
def long_coded(tmp_path_factory) -> tuple[Path, list[tuple[str, float, float]]]:
    rng = np.random.default_rng(3)
    words = [VOCAB[i] for i in rng.integers(0, len(VOCAB), 130)]
    audio, times = coded_speech(words, rng)
    path = tmp_path_factory.mktemp("coded") / "long.wav"
    sf.write(str(path), audio, 16000, subtype="FLOAT")  # float samples keep the codes exact
    return path, times


def _transcribe(path: Path, **kw) -> list:
    model = CodedModel()
    [res] = list(transcribe_files(model, GreedyDecoder(model.tokenizer), [InputFile(path, path.stem)],
                                  progress=False, **kw))
    assert res.error is None
    return res.transcript


@pytest.mark.parametrize("window,overlap,batch", [(10.0, 2.0, 4), (30.0, 4.0, 2), (6.0, 3.0, 1)])
def test_windows_stitch_without_lost_or_doubled_words(long_coded, window, overlap, batch):
    path, truth = long_coded
    duration = sf.info(str(path)).duration
    assert duration > 2 * window, "the recording must need several windows"
    t = _transcribe(path, window=window, overlap=overlap, batch_size=batch)
    assert [w.word for w in t.words] == [w for w, _, _ in truth]
    for w, (_, start, end) in zip(t.words, truth):
        assert w.start == pytest.approx(start, abs=1e-6) and w.end == pytest.approx(end, abs=1e-6)
        assert w.confidence > 0.99
    assert t.duration == pytest.approx(duration, abs=1e-3)


def test_json_words_are_ordered_and_inside_the_audio(long_coded):
    path, truth = long_coded
    t = _transcribe(path, window=10.0, overlap=2.0)
    data = json.loads(to_json(t, {"model": "m"}))
    assert data["text"] == " ".join(w for w, _, _ in truth) and data["model"] == "m"
    starts = [w["start"] for w in data["words"]]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(0 <= w["start"] < w["end"] <= data["duration"] for w in data["words"])
    assert all(0.0 <= w["confidence"] <= 1.0 for w in data["words"])


def test_merge_uses_a_shared_pause_and_drops_edge_fragments():
    words = [Word(f"W{i}", 0.5 * i, 0.5 * i + 0.3, 1.0) for i in range(40)]  # 0 .. 19.8 s
    a = WindowWords(0.0, 10.0, [w for w in words if w.end <= 9.9] + [Word("W20", 9.95, 10.0, 0.4)])
    # The second window sees the same words with times off by up to 30 ms and a cut-off fragment at its start.
    jitter = [Word(w.word, w.start + (0.03 if i % 2 else -0.03), w.end + 0.02, 1.0) for i, w in enumerate(words)]
    b = WindowWords(7.0, 17.0, [Word("W13", 7.0, 7.05, 0.3)] + [w for w in jitter if 7.1 <= w.start and w.end <= 17.0])
    c = WindowWords(14.0, 20.0, [w for w in words if w.start >= 14.1])
    merged = merge_windows([c, a, b])  # order of arrival does not matter
    assert [w.word for w in merged] == [w.word for w in words]


def test_merge_keeps_a_word_the_later_window_fused_with_the_cut_off_end_of_another():
    """No pause both windows agree on: the earlier window hears "HUMUSS | YOU", the later one (which
    starts inside HUMUSS) "SYOU". Cutting in the earlier window's pause, the word the cut runs through
    comes from the later window; cutting by word middles dropped YOU from both."""
    a = WindowWords(0.0, 4.0, [Word("THE", 2.0, 2.4, 1.0), Word("HUMUSS", 2.64, 3.06, 1.0),
                               Word("YOU", 3.72, 3.87, 1.0)])
    b = WindowWords(3.0, 7.0, [Word("SYOU", 3.0, 3.87, 1.0), Word("SCRACH", 4.2, 4.8, 1.0)])
    assert [w.word for w in merge_windows([a, b])] == ["THE", "HUMUSS", "SYOU", "SCRACH"]
    # The mirror image: the earlier window fuses across the cut, the later one has the pause.
    a = WindowWords(0.0, 4.0, [Word("THE", 2.0, 2.4, 1.0), Word("HUMUSSY", 2.64, 3.87, 1.0)])
    b = WindowWords(3.0, 7.0, [Word("S", 3.0, 3.06, 1.0), Word("YOU", 3.72, 3.87, 1.0), Word("SCRACH", 4.2, 4.8, 1.0)])
    assert [w.word for w in merge_windows([a, b])] == ["THE", "HUMUSSY", "SCRACH"]


def test_merge_without_any_pause_cuts_in_the_middle_once():
    words = [Word(f"W{i}", 0.4 * i, 0.4 * (i + 1), 1.0) for i in range(50)]  # continuous speech, 0 .. 20 s
    a = WindowWords(0.0, 12.0, [w for w in words if w.end <= 12.0])
    b = WindowWords(8.0, 20.0, [w for w in words if w.start >= 8.0])
    assert [w.word for w in merge_windows([a, b])] == [w.word for w in words]


def test_iter_windows_bounded_and_covering(tmp_path):
    path = tmp_path / "x.flac"
    write_audio(path, 61.0, rate=22050, channels=2)
    wins = list(iter_windows(path, 20.0, 3.0))
    assert [round(s, 3) for s, _, _ in wins] == [0.0, 17.0, 34.0, 51.0]
    assert all(w.ndim == 1 and w.shape[0] <= 20 * 16000 + 1 for _, _, w in wins), "mono, 16 kHz, one window at a time"
    assert sum(n for _, n, _ in wins) == pytest.approx(61.0, abs=1e-3), "every sample counted once as new"
    assert wins[-1][0] + wins[-1][2].shape[0] / 16000 == pytest.approx(61.0, abs=1e-3)


def test_iter_windows_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16000)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00not audio at all")
    from asr.audio import AudioError

    for p, msg in ((empty, "empty"), (junk, "cannot decode")):
        with pytest.raises(AudioError, match=msg) as e:
            list(iter_windows(p))
        assert str(p) in str(e.value)
    with pytest.raises(ValueError, match="overlap"):
        list(iter_windows(junk, 5.0, 5.0))


def test_align_words_times_and_confidence():
    tok = CharTokenizer()
    H, I, O, K = tok.encode("HIOK")
    # frames: blank, H, H, blank, I, |, blank x3, O, blank, K  (posterior 0.8 on each token frame)
    path = [0, H, H, 0, I, 1, 0, 0, 0, O, 0, K]
    lp = torch.full((len(path), tok.vocab_size), 0.2 / (tok.vocab_size - 1)).log()
    for t, k in enumerate(path):
        lp[t, k] = np.log(0.8)
    hyp = Hypothesis("HI OK", [H, I, 1, O, K], [1, 4, 5, 9, 11])
    words = align_words(lp, hyp, tok, offset=10.0)
    assert [w.word for w in words] == ["HI", "OK"]
    assert (words[0].start, words[0].end) == (pytest.approx(10.04), pytest.approx(10.20))
    assert (words[1].start, words[1].end) == (pytest.approx(10.36), pytest.approx(10.48))
    assert all(w.confidence == pytest.approx(0.8, abs=1e-4) for w in words)
    assert align_words(lp, Hypothesis("", [], []), tok) == []
    clipped = align_words(lp, hyp, tok, offset=10.0, end_time=10.45)
    assert clipped[-1].end == pytest.approx(10.45), "times never pass the end of the audio"


class _PieceTokenizer:
    """SentencePiece-like units: "▁X" starts a word, a lone "▁" is a word break."""

    tokens = ["<blank>", "\u2581", "\u2581HEL", "LO", "\u2581WOR", "LD"]

    def decode(self, ids):
        return " ".join("".join(self.tokens[i] for i in ids).replace("\u2581", " ").split())

    def is_word_start(self, i):
        return self.tokens[i].startswith("\u2581")

    def is_space(self, i):
        return self.tokens[i] == "\u2581"


def test_align_words_with_word_start_pieces():
    lp = torch.full((8, 6), -9.0)
    for t, k in enumerate([2, 0, 3, 0, 4, 5, 0, 0]):
        lp[t, k] = 0.0
    words = align_words(lp.log_softmax(-1), Hypothesis("HELLO WORLD", [2, 3, 4, 5], [0, 2, 4, 5]), _PieceTokenizer())
    assert [(w.word, w.start, w.end) for w in words] == [("HELLO", 0.0, 0.12), ("WORLD", 0.16, 0.24)]


def test_timestamp_formats_and_subtitles():
    assert format_timestamp(3661.5) == "01:01:01,500"
    assert format_timestamp(59.9996, ".") == "00:01:00.000"
    assert format_timestamp(0.0) == "00:00:00,000"
    words = [Word("A", 0.5, 0.7, 0.9), Word("B", 0.8, 1.0, 0.9), Word("C", 3.0, 3.2, 0.9)]  # a 2 s pause before C
    from asr.transcribe import Transcript

    t = Transcript("x.wav", 4.0, words)
    assert subtitle_cues(words) == [(0.5, 1.0, "A B"), (3.0, 3.2, "C")]
    srt = to_srt(t)
    assert re.fullmatch(r"1\n00:00:00,500 --> 00:00:01,000\nA B\n\n2\n00:00:03,000 --> 00:00:03,200\nC\n", srt)
    vtt = to_vtt(t)
    assert vtt.startswith("WEBVTT\n\n00:00:00.500 --> 00:00:01.000\nA B\n")
    assert "00:00:03.000 --> 00:00:03.200\nC" in vtt
    long = [Word("WORD", i * 0.5, i * 0.5 + 0.4, 1.0) for i in range(30)]
    assert all(len(text) <= 42 and e - s <= 6.0 for s, e, text in subtitle_cues(long))


def test_collect_inputs_folders_lists_and_names(tmp_path):
    write_audio(tmp_path / "a" / "x.wav", 0.2)
    write_audio(tmp_path / "b" / "x.wav", 0.2)
    write_audio(tmp_path / "b" / "deep" / "y.flac", 0.2)
    (tmp_path / "b" / "notes.md").write_text("not audio")
    lst = tmp_path / "list.lst"
    lst.write_text("# comment\na/x.wav\n\nmissing.wav\n")
    problems: list[str] = []
    got = collect_inputs([tmp_path / "b", lst, tmp_path / "nope"], problems)
    assert [(f.path.relative_to(tmp_path).as_posix(), f.key) for f in got] == [
        ("b/deep/y.flac", "deep/y"), ("b/x.wav", "x")]
    assert any("missing.wav" in p for p in problems) and any("nope" in p for p in problems)
    assert any("same output name 'x'" in p for p in problems), "a/x.wav from the list would overwrite b/x.wav's outputs"


def _tiny_package(path: Path, cfg) -> Path:
    from asr.config import FeatureConfig
    from asr.model import AcousticModel
    from asr.package import save_package

    torch.manual_seed(0)
    tok = CharTokenizer()
    model = AcousticModel(cfg, 80, tok.vocab_size)
    save_package(path, model, FeatureConfig(), torch.full((80,), -5.0), torch.full((80,), 3.0), tok)
    return path


def test_cli_outputs_skip_done_and_bad_file(tmp_path, tiny_model_cfg, capsys):
    pkg = _tiny_package(tmp_path / "m.pt", tiny_model_cfg)
    audio = tmp_path / "audio"
    write_audio(audio / "one.wav", 1.0, seed=1)
    write_audio(audio / "sub" / "two.flac", 1.5, rate=44100, channels=2, seed=2)
    write_audio(audio / "three.ogg", 0.7, seed=3, fmt="OGG", subtype="VORBIS")
    (audio / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")
    out = tmp_path / "out"
    args = ["transcribe", "--model", str(pkg), str(audio), "-o", str(out), "-f", "all", "--no-progress",
            "--device", "cpu"]
    assert main(args) == 3, "a skipped file makes the exit status 3"
    err = capsys.readouterr().err
    assert "broken.wav" in err and "3 files" in err
    for key in ("one", "sub/two", "three"):
        for fmt in ("txt", "json", "srt", "vtt"):
            assert (out / f"{key}.{fmt}").is_file(), f"{key}.{fmt}"
        data = json.loads((out / f"{key}.json").read_text())
        assert data["text"] == (out / f"{key}.txt").read_text().strip()
        assert data["decoder"] == "greedy" and data["duration"] > 0
    assert json.loads((out / "sub/two.json").read_text())["duration"] == pytest.approx(1.5, abs=1e-3)
    assert not list(out.rglob("broken.*")) and not list(out.rglob("*.tmp"))

    # A restarted job skips what is done (the sentinel survives) and redoes it only with --overwrite.
    (out / "one.txt").write_text("SENTINEL\n")
    (out / "three.vtt").unlink()  # an incomplete set of outputs is redone
    assert main(args) == 3  # broken.wav is still broken
    assert (out / "one.txt").read_text() == "SENTINEL\n"
    assert (out / "three.vtt").is_file()
    assert "1 files" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 3
    assert (out / "one.txt").read_text() != "SENTINEL\n"


def test_cli_stdout_formats(tmp_path, tiny_model_cfg, capsys):
    pkg = _tiny_package(tmp_path / "m.pt", tiny_model_cfg)
    write_audio(tmp_path / "a.wav", 0.8)
    base = ["transcribe", "--model", str(pkg), str(tmp_path / "a.wav"), "--no-progress", "--device", "cpu"]
    assert main(base + ["-f", "vtt"]) == 0
    assert capsys.readouterr().out.startswith("WEBVTT")
    assert main(base + ["-f", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["file"].endswith("a.wav")
    assert main(base + ["-f", "all"]) == 2, "several formats need an output folder"
    # Files that would share an output name only clash in an output folder, not on stdout.
    write_audio(tmp_path / "b" / "a.flac", 0.5)
    two = ["transcribe", "--model", str(pkg), str(tmp_path / "a.wav"), str(tmp_path / "b" / "a.flac"),
           "--no-progress", "--device", "cpu"]
    assert main(two) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [str(tmp_path / "a.wav"), str(tmp_path / "b" / "a.flac")]
    assert main(two + ["-o", str(tmp_path / "out")]) == 3
    assert "same output name 'a'" in capsys.readouterr().err


def test_batched_equals_one_at_a_time(tmp_path, tiny_model_cfg):
    from asr.package import load_package
    from asr.recognizer import Recognizer

    rec = Recognizer.from_package(load_package(_tiny_package(tmp_path / "m.pt", tiny_model_cfg)))
    files = []
    for i, secs in enumerate([0.6, 2.3, 1.1, 0.9, 1.7]):
        write_audio(tmp_path / f"f{i}.wav", secs, seed=i)
        files.append(InputFile(tmp_path / f"f{i}.wav", f"f{i}"))

    def texts(batch: int) -> list[tuple[str, list[float]]]:
        res = transcribe_files(rec, GreedyDecoder(rec.tokenizer), files, batch_size=batch, progress=False)
        return [(r.transcript.text, [w.start for w in r.transcript.words]) for r in res]

    one = texts(1)
    assert texts(3) == one and texts(8) == one


def test_run_reports_bad_file_and_keeps_order(tmp_path, long_coded):
    path, truth = long_coded
    short_audio, short_truth = coded_speech(["HELLO", "WORLD"], np.random.default_rng(0))
    sf.write(str(tmp_path / "short.wav"), short_audio, 16000, subtype="FLOAT")
    (tmp_path / "bad.flac").write_bytes(b"fLaC broken")
    lst = tmp_path / "files.txt"
    lst.write_text(f"short.wav\nbad.flac\n{path}\n")
    model = CodedModel()
    import io

    buf = io.StringIO()
    summary = run(model, GreedyDecoder(model.tokenizer), [lst], window=10.0, overlap=2.0, batch_size=3,
                  progress=False, stdout=buf)
    assert summary.transcribed == 2 and len(summary.problems) == 1 and "bad.flac" in summary.problems[0]
    lines = buf.getvalue().splitlines()
    assert lines == [f"{tmp_path / 'short.wav'}\tHELLO WORLD", f"{path}\t" + " ".join(w for w, _, _ in truth)]


def test_progress_reaches_the_end_when_files_are_skipped(tmp_path, long_coded, monkeypatch):
    """The bar's total is every file's length from its header; a file skipped when read (NaN samples:
    its header is fine) still counts as done, so a run with bad files ends at 100%, not short of it."""
    import asr.transcribe as tr

    bars = []

    class Bar:
        def __init__(self, total, **kw):
            self.total, self.n, self.written, self.postfix, self.closed = total, 0.0, [], "", False
            bars.append(self)

        def update(self, n):
            self.n += n

        def write(self, msg, **kw):
            self.written.append(msg)

        def set_postfix_str(self, text):
            self.postfix = text

        def close(self):
            self.closed = True

    monkeypatch.setattr(tr, "tqdm", Bar)
    path, _ = long_coded
    bad = np.zeros(16000 * 5, dtype=np.float32)
    bad[100] = np.nan
    sf.write(str(tmp_path / "nan.wav"), bad, 16000, subtype="FLOAT")
    files = [InputFile(tmp_path / "nan.wav", "nan"), InputFile(path, "long")]
    model = CodedModel()
    res = list(transcribe_files(model, GreedyDecoder(model.tokenizer), files, window=10.0, overlap=2.0))
    assert res[0].error is not None and res[1].error is None
    [bar] = bars
    assert bar.total == pytest.approx(5.0 + sf.info(str(path)).duration)
    assert bar.n == pytest.approx(bar.total, abs=0.01)
    assert len(bar.written) == 1 and "nan.wav" in bar.written[0] and bar.postfix == "2/2 files" and bar.closed
