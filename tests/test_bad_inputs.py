"""A corpus of broken files, generated here, through ``asr prepare``, ``shard``, ``train``, ``evaluate``
and ``transcribe``: each bad item is named with its problem on one line, the good items go on, the
exit status is 3 when something was skipped, and ``--strict`` stops at the first problem (status 2).

The commands run in this process through ``asr.cli.main`` (the same code as the ``asr`` command,
without paying a Python start-up per call). docs/reliability.md tabulates what is checked here.
"""
from __future__ import annotations

import io
import json
import logging
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds

from asr.cli import main
from asr.data.shards import shard_metadata
from tests.conftest import signal

# Tiny model and batches: a training run over this corpus takes a couple of seconds.
TRAIN = ["features.n_mels=20", "model.subsample_channels=4", "model.hidden=16", "model.layers=1",
         "model.dropout=0.0", "train.max_frames=400", "train.max_batch=4", "train.num_workers=0",
         "train.cmvn_utts=0", "train.epochs=1", "train.bf16=false", "train.threads=1", "train.warmup_steps=1",
         "train.max_duration=10"]


def encoded(data: np.ndarray, rate: int, subtype: str, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


def good_files() -> dict[str, bytes]:
    """Unusual but valid audio: every one must be read, resampled/mixed down and used."""
    return {
        "good_a.wav": encoded(signal(0.8, seed=1), 16000, "PCM_16"),
        "good_b.flac": encoded(signal(0.9, seed=2), 16000, "PCM_16", "FLAC"),
        "pcm_u8.wav": encoded(signal(0.7, seed=3), 16000, "PCM_U8"),
        "pcm_24.wav": encoded(signal(0.7, seed=4), 16000, "PCM_24"),
        "float32.wav": encoded(signal(0.7, seed=5), 16000, "FLOAT"),
        "six_channels.wav": encoded(signal(0.7, seed=6, channels=6), 16000, "PCM_16"),
        "rate_11025.wav": encoded(signal(0.7, rate=11025, seed=7), 11025, "PCM_16"),
        "rate_44100.flac": encoded(signal(0.7, rate=44100, seed=8), 44100, "PCM_16", "FLAC"),
        "silent.wav": encoded(np.zeros(12000, np.float32), 16000, "PCM_16"),
        "long_40s.flac": encoded(signal(40.0, seed=9), 16000, "PCM_16", "FLAC"),
    }


@dataclass(frozen=True)
class Bad:
    data: bytes
    problem: str  # regex the one-line message must match (after the file name)
    header_ok: bool = False  # passes a header-only check (prepare); found when the samples are decoded


def bad_files() -> dict[str, Bad]:
    wav = encoded(signal(0.8, seed=10), 16000, "PCM_16")
    flac = encoded(signal(0.8, seed=11), 16000, "PCM_16", "FLAC")
    rng = np.random.default_rng(0)
    nan = signal(0.7, seed=12)
    nan[100:200] = np.nan
    inf = signal(0.7, seed=13)
    inf[50] = np.inf
    undecodable = r"cannot (decode audio|read audio header)"
    return {
        "empty.wav": Bad(b"", r"empty file \(0 bytes\)"),
        "truncated_header.wav": Bad(wav[:30], undecodable),
        "truncated.flac": Bad(flac[: len(flac) // 2], r"cannot decode audio", header_ok=True),
        "corrupt.flac": Bad(flac[:200] + rng.integers(0, 256, len(flac) - 200, dtype=np.uint8).tobytes(),
                            r"cannot decode audio", header_ok=True),
        "random_bytes.wav": Bad(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(), undecodable),
        "text.wav": Bad(b"this is a text file, not audio\n" * 20, undecodable),
        "video.m4a": Bad(b"\x00\x00\x00\x18ftypM4A \x00\x00\x02\x00isomM4A " + bytes(2000), undecodable),
        "zero_length.wav": Bad(encoded(np.zeros(0, np.float32), 16000, "PCM_16"), r"no samples|zero-length"),
        "nan.wav": Bad(encoded(nan, 16000, "FLOAT"), r"NaN or Inf", header_ok=True),
        "inf.wav": Bad(encoded(inf, 16000, "FLOAT"), r"NaN or Inf", header_ok=True),
    }


# A WAV cut in the middle of its samples: libsndfile reads the part that is there, and its header
# then reports the shorter length. Only a manifest that remembers the real length can tell.
TRUNCATED_DATA = "truncated_data.wav"

# Manifest lines that are not utterances, and what asr says about each.
MALFORMED = [
    ('{"id": "torn", "audio": "audio/good_a.wav", "te', r"malformed JSON \(Unterminated string"),
    ("[1, 2, 3]", r"expected a JSON object, got list"),
    ('{"id": "nodur", "audio": "audio/good_a.wav", "text": "X"}', r"missing field 'duration'"),
    ('{"id": "negdur", "audio": "audio/good_a.wav", "text": "X", "duration": -1}', r"invalid duration -1"),
    ('{"id": "strdur", "audio": "audio/good_a.wav", "text": "X", "duration": "long"}', r"invalid duration 'long'"),
    ('{"id": 7, "audio": "audio/good_a.wav", "text": "X", "duration": 1}', r"'id' must be a non-empty string"),
    ('{"id": "empty_text", "audio": "audio/good_a.wav", "text": "  ", "duration": 0.8}', r"empty transcript"),
    ('{"id": "good_a", "audio": "audio/good_b.flac", "text": "DUPLICATE", "duration": 0.9}', r"duplicate id 'good_a'"),
    ('{"id": "missing", "audio": "audio/nowhere.wav", "text": "GONE", "duration": 0.8}', r"audio file not found"),
    ("\x00\xff garbage", r"malformed JSON"),
    (b'{"id": "latin1", "text": "caf\xe9"}', r"not UTF-8 text \(byte 0xe9 at column 30\)"),
]

# Transcripts that are valid manifest text but hard for training (the audio is good_a.wav, 0.8 s).
ODD_TEXTS = {
    "odd_chars": "Ça va? naïve ☃ 123",  # folded/dropped by normalization: trains on "CA VA NAIVE"
    "only_symbols": "数字 123 !!",  # nothing left after normalization
    "infeasible": "THIS TRANSCRIPT IS FAR TOO LONG FOR LESS THAN ONE SECOND OF AUDIO TO HOLD",
}


@dataclass
class Corpus:
    root: Path
    audio: Path
    manifest: Path  # every file + odd texts + malformed lines
    good: set[str]  # ids a command should process
    bad: dict[str, Bad]  # id -> expected problem


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("bad_inputs")
    audio = root / "audio"
    audio.mkdir()
    lines, good = [], set()
    for name, data in good_files().items():
        (audio / name).write_bytes(data)
        lines.append({"id": Path(name).stem, "audio": f"audio/{name}", "text": "HELLO THERE",
                      "duration": round(sf.info(str(audio / name)).duration, 3)})
        good.add(Path(name).stem)
    bad = bad_files()
    for name, b in bad.items():
        (audio / name).write_bytes(b.data)
        lines.append({"id": Path(name).stem, "audio": f"audio/{name}", "text": "HELLO THERE", "duration": 0.7})
    full = encoded(signal(0.8, seed=14), 16000, "PCM_16")
    (audio / TRUNCATED_DATA).write_bytes(full[: len(full) // 2])
    lines.append({"id": "truncated_data", "audio": f"audio/{TRUNCATED_DATA}", "text": "HELLO THERE", "duration": 0.8})
    for uid, text in ODD_TEXTS.items():
        lines.append({"id": uid, "audio": "audio/good_a.wav", "text": text, "duration": 0.8})
        good.add(uid)
    manifest = root / "all.jsonl"
    rows = [json.dumps(x, ensure_ascii=False).encode() for x in lines]
    rows += [m if isinstance(m, bytes) else m.encode() for m, _ in MALFORMED]
    manifest.write_bytes(b"\n".join(rows) + b"\n")
    return Corpus(root, audio, manifest, good, {Path(n).stem: b for n, b in bad.items()})


def clean_manifest(corpus: Corpus) -> Path:
    """The manifest without its malformed lines (beside it: audio paths are relative)."""
    path = corpus.root / "clean.jsonl"
    path.write_bytes(b"\n".join(corpus.manifest.read_bytes().splitlines()[: -len(MALFORMED)]) + b"\n")
    return path


def asr(args: list[str], capsys, caplog) -> tuple[int, str, str]:
    """Run ``asr ARGS`` in this process: (exit status, stdout, stderr plus the log)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err + "\n" + caplog.text


def assert_named(text: str, what: str, problem: str) -> None:
    """``text`` has a line naming ``what`` followed (on the same line) by ``problem``."""
    assert re.search(rf"{re.escape(what)}\S*:.*(?:{problem})", text), f"no line names {what!r} with /{problem}/"


def manifest_line_problems(corpus: Corpus, text: str) -> None:
    first = len(corpus.manifest.read_bytes().splitlines()) - len(MALFORMED) + 1
    for n, (_, problem) in enumerate(MALFORMED, first):
        assert_named(text, f"{corpus.manifest.name}:{n}", problem)


# ------------------------------------------------------------------------------------------- prepare

def librispeech_layout(corpus: Corpus, root: Path) -> dict[str, str]:
    """Every corpus file as a LibriSpeech chapter (``ID.flac``, whatever is inside) plus bad
    transcript lines. Returns id -> original file name."""
    chapter = root / "10" / "20"
    chapter.mkdir(parents=True)
    ids, lines = {}, []
    for k, path in enumerate(sorted(corpus.audio.iterdir())):
        uid = f"10-20-{k:04d}"
        shutil.copy(path, chapter / f"{uid}.flac")  # libsndfile goes by the content, not the suffix
        ids[uid] = path.name
        lines.append(f"{uid} {path.stem.replace('_', ' ')}")
    good_id = next(u for u, n in ids.items() if n == "good_a.wav")
    lines += ["10-20-0900 ", f"{good_id} A SECOND LINE FOR THE SAME ID", "10-20-0901 NO AUDIO FILE",
              "10-20-0902 数字 123"]
    (chapter / "10-20.trans.txt").write_text("\n".join(lines) + "\n")
    return ids


def test_prepare_names_each_bad_recording_and_line_and_keeps_the_rest(corpus, tmp_path, capsys, caplog):
    ids = librispeech_layout(corpus, tmp_path / "libri")
    rc, out, err = asr(["prepare", tmp_path / "libri", "-o", tmp_path / "all.jsonl"], capsys, caplog)
    assert rc == 3
    names = {json.loads(line)["id"]: ids.get(json.loads(line)["id"]) for line in (tmp_path / "all.jsonl").read_text().splitlines()}
    bad = bad_files()
    # prepare reads headers only: what needs the samples decoded is left to shard (next test).
    expected = {u for u, n in ids.items() if n not in bad or bad[n].header_ok}
    assert set(names) == expected
    for uid, name in ids.items():
        if name in bad and not bad[name].header_ok:
            assert_named(err, f"{uid}.flac", bad[name].problem)
    assert_named(err, "10-20.trans.txt:", "utterance 10-20-0900 has an empty transcript")
    assert_named(err, "10-20.trans.txt:", "duplicate id")
    assert_named(err, "10-20.trans.txt:", r"audio file not found: .*10-20-0901\.flac")
    assert_named(err, "10-20.trans.txt:", "utterance 10-20-0902 has an empty transcript")
    n_bad = sum(not b.header_ok for b in bad.values()) + 4
    assert f"{n_bad} utterances skipped" in err


def test_prepare_strict_stops_at_the_first_problem(corpus, tmp_path, capsys, caplog):
    ids = librispeech_layout(corpus, tmp_path / "libri")
    rc, _, err = asr(["prepare", tmp_path / "libri", "-o", tmp_path / "all.jsonl", "--strict"], capsys, caplog)
    assert rc == 2
    first_bad = next(u for u, n in sorted(ids.items()) if n in bad_files() and not bad_files()[n].header_ok)
    assert re.search(rf"asr prepare: error: .*{first_bad}\.flac: ", err), err
    assert not (tmp_path / "all.jsonl").exists()


# --------------------------------------------------------------------------------------------- shard

def test_shard_decodes_every_file_names_each_bad_one_and_keeps_the_rest(corpus, tmp_path, capsys, caplog):
    out = tmp_path / "shards"
    rc, _, err = asr(["shard", corpus.manifest, "-o", out, "--max-per-shard", "5"], capsys, caplog)
    assert rc == 3
    kept = {m["id"] for m in shard_metadata(sorted(str(p) for p in out.glob("all-*.tar")))}
    assert kept == corpus.good
    for uid, b in corpus.bad.items():
        assert_named(err, uid, b.problem)
    assert_named(err, TRUNCATED_DATA, r"audio is 0\.40 s but the manifest says 0\.80 s")
    manifest_line_problems(corpus, err)
    assert f"{len(corpus.bad) + 1 + len(MALFORMED)} utterances skipped" in err
    index = json.loads((out / "all.index.json").read_text())
    assert index["num_utts"] == len(corpus.good)


def test_shard_with_nothing_to_shard_is_an_error(corpus, tmp_path, capsys, caplog):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rc, _, err = asr(["shard", empty, "-o", tmp_path / "shards"], capsys, caplog)
    assert rc == 2 and f"no utterance of {empty} could be sharded" in err
    with pytest.raises(SystemExit):
        asr(["shard", corpus.manifest, "-o", tmp_path / "shards", "--max-per-shard", "0"], capsys, caplog)


def test_shard_strict_stops_at_the_first_bad_line_or_file(corpus, tmp_path, capsys, caplog):
    rc, _, err = asr(["shard", corpus.manifest, "-o", tmp_path / "s", "--strict"], capsys, caplog)
    assert rc == 2 and re.search(r"asr shard: error: .*all\.jsonl:\d+: malformed JSON", err), err
    # Only good lines, but bad audio: the first bad file stops it.
    clean = clean_manifest(corpus)
    rc, _, err = asr(["shard", clean, "-o", tmp_path / "s", "--strict"], capsys, caplog)
    first = next(json.loads(x)["id"] for x in clean.read_text().splitlines() if json.loads(x)["id"] in corpus.bad)
    assert rc == 2 and re.search(rf"asr shard: error: \S*{first}\.\w+: ", err), err


# --------------------------------------------------------------------------------------------- train

def broken_shards(folder: Path, intact: Path) -> dict[str, str]:
    """Shards broken in the ways a disk or a copy breaks them, written to ``folder``; returns
    shard name (and sample key) -> expected problem."""
    data = intact.read_bytes()
    (folder / "torn-000000.tar").write_bytes(data[: len(data) // 2 + 100])
    (folder / "junk-000000.tar").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, np.uint8).tobytes())
    (folder / "empty-000000.tar").write_bytes(b"")
    # Well-formed tars with bad samples inside: a FLAC that does not decode, a sample without audio.
    with wds.TarWriter(str(folder / "badsample-000000.tar")) as w:
        meta = {"id": "garbled", "audio": "garbled.flac", "text": "HELLO", "duration": 0.5}
        w.write({"__key__": "garbled", "flac": b"fLaC" + bytes(300), "json": meta})
        w.write({"__key__": "no_audio", "json": {**meta, "id": "no_audio"}})
    return {
        "torn-000000.tar": r"unreadable shard data",
        "junk-000000.tar": r"unreadable shard data",
        "empty-000000.tar": r"unreadable shard data",
        "badsample-000000.tar:garbled": r"cannot decode audio",
        "badsample-000000.tar:no_audio": r"lacks its audio \(\.flac or \.wav\) or its \.json member",
    }


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory) -> tuple[list[str], dict[str, str]]:
    """The good corpus as shards plus broken shards; (shard paths, shard/key -> expected problem)."""
    out = tmp_path_factory.mktemp("train_shards")
    assert main(["shard", str(corpus.manifest), "-o", str(out), "--max-per-shard", "5"]) == 3
    good = sorted(str(p) for p in out.glob("all-*.tar"))
    broken = broken_shards(out, Path(good[0]))
    return good + sorted({str(out / k.split(":")[0]) for k in broken}), broken


def test_train_skips_bad_shards_samples_and_labels_and_trains_on_the_rest(corpus, shards, tmp_path, capsys, caplog):
    paths, broken = shards
    rc, out, err = asr(["train", "--train", *paths, "--dev", corpus.manifest, "--exp", tmp_path / "exp",
                        "--device", "cpu", *TRAIN], capsys, caplog)
    assert rc == 3, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and summary["steps"] > 0 and summary["nonfinite"] == 0
    assert (tmp_path / "exp" / "model.pt").is_file()
    skipped = "\n".join(summary["skipped"])
    assert all("\n" not in s for s in summary["skipped"])
    for where, problem in broken.items():
        assert_named(skipped, where, problem)
    assert_named(skipped, "long_40s", r"longer than max_duration=10 s")
    assert_named(skipped, "infeasible", r"label needs \d+ frames but the audio gives \d+ \(CTC-infeasible\)")
    assert_named(skipped, "only_symbols", r"empty after normalization")
    assert summary["infeasible"] == 2  # only_symbols and infeasible; odd_chars trains as "CA VA NAIVE"
    # The dev set is the same broken manifest: its bad lines and files are reported too.
    for uid, b in corpus.bad.items():
        assert_named(skipped, uid, b.problem)
    manifest_line_problems(corpus, err)
    # ... and kept in train_summary.json, the dev manifest's bad lines included.
    on_disk = json.loads((tmp_path / "exp" / "train_summary.json").read_text())
    assert on_disk["skipped"] == summary["skipped"]
    manifest_line_problems(corpus, "\n".join(on_disk["skipped"]))
    assert re.search(r"\d+ training or dev items skipped", err)


def test_train_strict_stops_at_the_first_problem(corpus, shards, tmp_path, capsys, caplog):
    paths, broken = shards
    rc, _, err = asr(["train", "--train", *paths, "--exp", tmp_path / "exp", "--device", "cpu", "--strict", *TRAIN],
                     capsys, caplog)
    assert rc == 2
    line = next(x for x in err.splitlines() if x.startswith("asr train: error: --strict: "))
    assert any(re.search(p, line) for p in [*broken.values(), r"longer than max_duration", r"CTC-infeasible",
                                            r"empty after normalization"]), line


def test_train_refuses_a_missing_shard_or_a_broken_index(tmp_path, capsys, caplog):
    rc, _, err = asr(["train", "--train", tmp_path / "nope-000000.tar", "--exp", tmp_path / "exp", *TRAIN], capsys, caplog)
    assert rc == 2 and "nope-000000.tar: no such shard file" in err
    (tmp_path / "x.index.json").write_text('{"shards": [')
    rc, _, err = asr(["train", "--train", tmp_path / "x.index.json", "--exp", tmp_path / "exp", *TRAIN], capsys, caplog)
    assert rc == 2 and "x.index.json: not a shard index" in err
    (tmp_path / "junk-000000.tar").write_bytes(bytes(range(256)) * 20)
    rc, _, err = asr(["train", "--train", tmp_path / "junk-000000.tar", "--exp", tmp_path / "exp", *TRAIN], capsys, caplog)
    assert rc == 2 and "no training utterance could be read from the shards" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------ evaluate, transcribe

@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    from asr.config import FeatureConfig, ModelConfig
    from asr.model import AcousticModel
    from asr.package import save_package
    from asr.text import CharTokenizer

    torch.manual_seed(0)
    tok = CharTokenizer()
    model = AcousticModel(ModelConfig(subsample_channels=4, hidden=16, layers=1, dropout=0.0), 80, tok.vocab_size)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_package(path, model, FeatureConfig(), torch.full((80,), -5.0), torch.full((80,), 3.0), tok)
    return path


def test_evaluate_scores_the_good_and_names_the_bad(corpus, package, tmp_path, capsys, caplog):
    rc, out, err = asr(["evaluate", package, corpus.manifest, "--out", tmp_path / "dec", "--device", "cpu",
                        "--workers", "0", "--no-report", "--threads", "1"], capsys, caplog)
    assert rc == 3
    assert re.search(r"WER \d+\.\d\d%", out)
    results = json.loads((tmp_path / "dec" / "results.json").read_text())
    recogs = (tmp_path / "dec" / "recogs.txt").read_text().splitlines()
    # Evaluation decodes what it can: the truncated WAV's readable part too (it has no shard check).
    assert {line.split("\t")[0] for line in recogs} == corpus.good | {"truncated_data"}
    assert results["num_utts"] == len(corpus.good) + 1
    assert results["num_skipped"] == len(corpus.bad) + len(MALFORMED)
    for uid, b in corpus.bad.items():
        assert_named(err, uid, b.problem)
    manifest_line_problems(corpus, err)
    assert f"{len(corpus.bad) + len(MALFORMED)} utterances skipped" in err


def test_evaluate_writes_its_report_beside_the_scores(corpus, package, tmp_path, capsys, caplog):
    rc, out, _ = asr(["evaluate", package, clean_manifest(corpus), "--out", tmp_path / "dec", "--device", "cpu",
                      "--workers", "0", "--threads", "1"], capsys, caplog)
    assert rc == 3 and re.search(r"WER \d+\.\d\d%", out)
    assert (tmp_path / "dec" / "report.md").is_file() and list((tmp_path / "dec").glob("*.png"))
    results = json.loads((tmp_path / "dec" / "results.json").read_text())
    assert "beam_size" not in results and "alpha" not in results  # greedy: no beam, no LM


def test_results_record_the_lm_and_its_weights(corpus, package, tmp_path, capsys, caplog):
    from asr.lm import build_lm, write_arpa

    write_arpa(build_lm(["A B C", "B C A"], order=2), tmp_path / "lm.arpa")
    rc, _, err = asr(["evaluate", package, clean_manifest(corpus), "--out", tmp_path / "dec", "--device", "cpu",
                      "--workers", "0", "--no-report", "--decoder", "beam", "--beam-size", "3", "--lm",
                      tmp_path / "lm.arpa", "--alpha", "0.7", "--beta", "1.5"], capsys, caplog)
    assert rc == 3, err[-2000:]
    results = json.loads((tmp_path / "dec" / "results.json").read_text())
    assert (results["beam_size"], results["lm"], results["alpha"], results["beta"]) == \
           (3, str(tmp_path / "lm.arpa"), 0.7, 1.5)


def test_evaluate_strict_stops_at_the_first_bad_file(corpus, package, tmp_path, capsys, caplog):
    rc, _, err = asr(["evaluate", package, clean_manifest(corpus), "--out", tmp_path / "dec", "--device", "cpu", "--workers", "0",
                      "--no-report", "--strict"], capsys, caplog)
    assert rc == 2
    line = next(x for x in err.splitlines() if x.startswith("asr evaluate: error: "))
    assert any(re.search(rf"{uid}\.\w+: (?:{b.problem})", line) for uid, b in corpus.bad.items()), line
    assert not (tmp_path / "dec" / "results.json").exists()


def test_transcribe_writes_the_good_and_names_the_bad(corpus, package, tmp_path, capsys, caplog):
    files = sorted(corpus.audio.iterdir())
    rc, _, err = asr(["transcribe", "--model", package, *files, tmp_path / "absent.wav", "-o", tmp_path / "out",
                      "-f", "all", "--no-progress", "--device", "cpu", "--threads", "1"], capsys, caplog)
    assert rc == 3
    written = {p.stem for p in (tmp_path / "out").glob("*.txt")}
    assert written == {p.stem for p in files if p.name not in bad_files()}
    for uid, b in corpus.bad.items():
        assert_named(err, uid, b.problem)
    assert_named(err, "absent.wav", "no such file")
    assert f"{len(corpus.bad) + 1} files skipped" in err
    # The 40 s file went through in windows, whole.
    assert json.loads((tmp_path / "out" / "long_40s.json").read_text())["duration"] == pytest.approx(40.0, abs=0.01)


def test_transcribe_strict_stops_at_the_first_bad_file(corpus, package, tmp_path, capsys, caplog):
    files = [corpus.audio / "good_a.wav", corpus.audio / "text.wav", corpus.audio / "good_b.flac"]
    rc, _, err = asr(["transcribe", "--model", package, *files, "-o", tmp_path / "out", "--no-progress",
                      "--device", "cpu", "--strict"], capsys, caplog)
    assert rc == 2
    assert re.search(r"asr transcribe: error: \S*text\.wav: cannot decode audio", err), err
    assert (tmp_path / "out" / "good_a.txt").is_file() and not (tmp_path / "out" / "good_b.txt").exists()


# --------------------------------------------------------------------------------- options and paths

@pytest.mark.parametrize("options, message", [
    (["--decoder", "greedy", "--lm", "{tmp}/x.arpa"], "the greedy decoder takes no LM"),
    (["--decoder", "beam", "--lm", "{tmp}/absent.arpa"], "absent.arpa: no such ARPA file"),
    (["--decoder", "beam", "--lm", "{good}"], "good_a.wav: not an ARPA text file"),
    (["--decoder", "beam", "--beam-size", "0"], "argument --beam-size: must be at least 1, got 0"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--window", "3"], "--overlap 4 s must be at least 0 and less than --window 3 s"),
    (["--overlap", "-1"], "--overlap -1 s must be at least 0"),
])
def test_a_bad_option_is_one_line_before_any_file_is_read(corpus, package, tmp_path, capsys, caplog, options,
                                                           message):
    good = corpus.audio / "good_a.wav"
    opts = [o.format(tmp=tmp_path, good=good) for o in options]
    with pytest.raises(SystemExit) if "argument" in message else _no_exit() as stop:
        rc, _, err = asr(["transcribe", "--model", package, good, "--no-progress", "--device", "cpu", *opts],
                         capsys, caplog)
    if stop is not None:  # argparse's own usage error
        rc, err = stop.value.code, capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert "skipped" not in err  # an option error is not blamed on the file


class _no_exit:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> bool:
        return False


def test_evaluate_checks_its_decoder_options_before_the_manifest(package, tmp_path, capsys, caplog):
    rc, _, err = asr(["evaluate", package, tmp_path / "absent.jsonl", "--decoder", "beam", "--lm", tmp_path / "no.arpa"],
                     capsys, caplog)
    assert rc == 2 and "no.arpa: no such ARPA file" in err and "absent.jsonl" not in err


def test_a_gpu_asked_for_where_there_is_none_is_one_line(package, corpus, capsys, caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, _, err = asr(["transcribe", "--model", package, corpus.audio / "good_a.wav", "--device", "cuda"], capsys, caplog)
    assert rc == 2 and "--device cuda: no CUDA GPU is available here" in err


def test_evaluate_with_nothing_decodable_is_an_error_not_a_zero_wer(corpus, package, tmp_path, capsys, caplog):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "t", "audio": str(corpus.audio / "text.wav"), "text": "A B", "duration": 1.0})
                   + "\n")
    for manifest in (tmp_path / "empty.jsonl", bad):
        manifest.touch()
        rc, out, err = asr(["evaluate", package, manifest, "--out", tmp_path / "dec", "--device", "cpu",
                            "--workers", "0"], capsys, caplog)
        assert rc == 2 and "WER" not in out
        assert f"no utterance of {manifest} could be decoded" in err
        assert not (tmp_path / "dec" / "results.json").exists()


def test_an_output_path_that_is_a_file_is_one_line(corpus, package, tmp_path, capsys, caplog):
    taken = tmp_path / "taken"
    taken.write_text("")
    rc, _, err = asr(["export", package, "-o", taken], capsys, caplog)
    assert rc == 2 and str(taken) in err and "Traceback" not in err


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys, caplog):
    from asr import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_plot", interrupted)
    rc, _, err = asr(["plot", "whatever.jsonl"], capsys, caplog)
    assert rc == 130 and "asr plot: interrupted" in err


@pytest.mark.parametrize("argv, message", [
    (["synth", "out", "--train-voices", "0"], "argument --train-voices: must be at least 1, got 0"),
    (["synth", "out", "--num-test", "0"], "argument --num-test: must be at least 1, got 0"),
    (["synth", "out", "--num-dev", "-1"], "argument --num-dev: must be at least 0, got -1"),
    (["augment", "m.jsonl", "-o", "o.jsonl", "--audio-dir", "a", "--speeds", "0.9", "0"],
     "argument --speeds: must be a number above 0, got 0"),
    (["augment", "m.jsonl", "-o", "o.jsonl", "--audio-dir", "a", "--synth-voices", "0"],
     "argument --synth-voices: must be at least 1, got 0"),
])
def test_data_tool_counts_are_checked_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
