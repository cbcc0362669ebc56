"""asr.report and asr.plot: per-speaker and per-length WER, alignments, confusions, PNGs; training curves."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from asr.cli import main
from asr.metrics import score
from asr.plot import read_log
from asr.report import align_lines, length_scores, speaker_scores, write_report
from tests.conftest import write_audio

REFS = {"u1": "the cat sat on the mat", "u2": "hello world", "u3": "one two three four", "u4": "cat"}
HYPS = {"u1": "the bat sat on mat", "u2": "hello world uh", "u3": "one two three four", "u4": "bat"}
SPEAKERS = {"u1": "A", "u2": "A", "u3": "B", "u4": "B"}
DURATIONS = {"u1": 1.0, "u2": 3.0, "u3": 12.0, "u4": 25.0}


@pytest.fixture
def scored():
    ids = sorted(REFS)
    return score([REFS[i] for i in ids], [HYPS[i] for i in ids], ids)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_speaker_and_length_groups(scored):
    spk = speaker_scores(scored, SPEAKERS)
    assert [(g.name, g.utts, g.words, g.sub, g.dele, g.ins) for g in spk] == [("A", 2, 8, 1, 1, 1),
                                                                             ("B", 2, 5, 1, 0, 0)]
    assert spk[0].wer == pytest.approx(3 / 8) and spk[1].wer == pytest.approx(1 / 5), "worst speaker first"
    assert spk[1].cer == pytest.approx(1 / (len("ONE TWO THREE FOUR") + len("CAT"))), "one letter wrong in B's 21"
    by_time, unit = length_scores(scored, DURATIONS)
    assert unit == "duration"
    assert [(g.name, g.utts, g.errors) for g in by_time] == [("< 2 s", 1, 2), ("2-5 s", 1, 1), ("10-20 s", 1, 0),
                                                             (">= 20 s", 1, 1)]
    by_words, unit = length_scores(scored)
    assert unit == "reference words"
    assert [(g.name, g.utts, g.words) for g in by_words] == [("< 5 words", 3, 7), ("5-10 words", 1, 6)]
    # The groups add up to the corpus.
    assert sum(g.errors for g in spk) == scored.substitutions + scored.deletions + scored.insertions


def test_alignment_lines_mark_each_error():
    ref, hyp, marks = align_lines("THE CAT SAT ON THE MAT", "THE BAT SAT ON MAT")
    assert ref.split() == ["the", "CAT", "sat", "on", "THE", "mat"]
    assert hyp.split() == ["the", "BAT", "sat", "on", "***", "mat"]
    assert marks.split() == ["S", "D"]
    assert marks.index("S") == ref.index("CAT") == hyp.index("BAT")
    assert marks.index("D") == ref.index("THE") == hyp.index("***")
    ref, hyp, marks = align_lines("HELLO", "HELLO UH")
    assert (ref.split(), hyp.split(), marks.split()) == (["hello", "**"], ["hello", "UH"], ["I"])
    assert align_lines("A B", "") == ("A B", "* *", "D D")


def test_report_markdown_and_pngs(scored, tmp_path):
    path = write_report(tmp_path, scored, SPEAKERS, DURATIONS, title="unit test")
    md = path.read_text()
    assert md.startswith("# Evaluation report: unit test")
    assert "| WER | 30.77% (4 errors / 13 words) |" in md
    assert "| A | 2 | 8 | 37.50% |" in md and "| B | 2 | 5 | 20.00% |" in md
    assert "| 2 | CAT | BAT |" in md, "the most frequent substitution with its count"
    assert "| 1 | THE |" in md and "| 1 | UH |" in md
    # Worst utterance first in the alignment section, with its error marks.
    section = md[md.index("## Per-utterance alignment"):]
    assert section.index("u1  (2 errors") < section.index("u2  (1 errors") < section.index("u3  (0 errors")
    for png in ("wer_by_length.png", "wer_by_speaker.png", "confusions.png"):
        assert f"]({png})" in md
        w, h = _png_size(tmp_path / png)
        assert w >= 600 and h >= 300, f"{png} is {w}x{h}"


def test_report_error_tables_count_single_words(tmp_path):
    s = score(["i hate everyone equally it is ok"], ["i hat everyon ekually ok"], ["x"])
    md = write_report(tmp_path, s, {"x": None}, plots=False).read_text()
    tables = md[md.index("## Most frequent errors"):md.index("## Per-utterance alignment")]
    assert "| 1 | HATE | HAT |" in tables and "| 1 | EQUALLY | EKUALLY |" in tables
    assert "HATE EVERYONE" not in tables
    assert sum(s.sub_pairs.values()) + sum(s.del_words.values()) == s.substitutions + s.deletions == 5


def test_report_without_speakers(tmp_path):
    s = score(["a b c"], ["a b d"], ["x"])
    md = write_report(tmp_path, s, {"x": None}, plots=False).read_text()
    assert "The manifest has no speaker labels." in md
    assert not list(tmp_path.glob("*.png"))


def test_evaluate_writes_report(tmp_path, tiny_model_cfg):
    from asr.config import FeatureConfig
    from asr.model import AcousticModel
    from asr.package import save_package
    from asr.text import CharTokenizer

    torch.manual_seed(0)
    tok = CharTokenizer()
    save_package(tmp_path / "m.pt", AcousticModel(tiny_model_cfg, 80, tok.vocab_size), FeatureConfig(),
                 torch.full((80,), -5.0), torch.full((80,), 3.0), tok)
    lines = []
    for i, (spk, secs) in enumerate([("s1", 0.6), ("s1", 1.2), ("s2", 0.8)]):
        write_audio(tmp_path / f"{i}.wav", secs, seed=i)
        lines.append(json.dumps({"id": f"utt{i}", "audio": f"{i}.wav", "text": "hello world", "duration": secs,
                                 "speaker": spk}))
    (tmp_path / "test.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "dec"
    assert main(["evaluate", str(tmp_path / "m.pt"), str(tmp_path / "test.jsonl"), "--out", str(out),
                 "--workers", "0", "--device", "cpu"]) == 0
    md = (out / "report.md").read_text()
    assert "## WER by speaker" in md and "| s1 | 2 | 4 |" in md and "| s2 | 1 | 2 |" in md
    assert json.loads((out / "results.json").read_text())["num_utts"] == 3
    assert (out / "confusions.png").is_file() and (out / "wer_by_speaker.png").is_file()


def _write_log(path: Path) -> None:
    recs = [{"step": s, "epoch": 1, "loss": 3.0 / s, "lr": 1e-3 * s / 20, "grad_norm": 2.0, "padding": 0.1,
             "audio_x": 50.0, "time": s} for s in range(5, 25, 5)]
    recs.append({"epoch": 1, "step": 20, "train_loss": 0.5, "dev_wer": 0.6, "dev_cer": 0.3})
    # A resumed run restarts from step 10 and rewrites steps 15 and 20.
    recs += [{"step": s, "epoch": 1, "loss": 9.0, "lr": 1e-3, "grad_norm": 1.0, "padding": 0.1, "audio_x": 50.0,
              "time": s} for s in (15, 20)]
    recs.append({"epoch": 2, "step": 40, "train_loss": 0.3, "dev_wer": 0.4, "dev_cer": 0.2})
    path.write_text("\n".join(json.dumps(r) for r in recs) + '\n{"step": 45, "lo')  # torn last line


def test_read_log_dedupes_resumed_steps(tmp_path):
    _write_log(tmp_path / "train_log.jsonl")
    lg = read_log(tmp_path)
    assert [r["step"] for r in lg.steps] == [5, 10, 15, 20]
    assert [r["loss"] for r in lg.steps][2:] == [9.0, 9.0], "the later record of a step wins"
    assert [r["dev_wer"] for r in lg.epochs] == [0.6, 0.4]
    assert lg.bad_lines == 1 and lg.name == tmp_path.name


def test_cli_plot(tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    _write_log(exp / "train_log.jsonl")
    assert main(["plot", str(exp)]) == 0
    w, h = _png_size(exp / "train_curves.png")
    assert w >= 1000 and h >= 700
    other = tmp_path / "cmp.png"
    assert main(["plot", str(exp / "train_log.jsonl"), str(exp), "-o", str(other)]) == 0 and other.is_file()
    (tmp_path / "empty.jsonl").write_text("\n")
    assert main(["plot", str(tmp_path / "empty.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "no step or epoch records" in err and "empty.jsonl" in err, "the error names the log"


# Records of the right kind with a field missing, null, a string or a bool: skipped, never a crash.
ODD_RECORDS = [{"step": 5, "loss": None, "lr": 0.1}, {"step": "x", "loss": 1.0, "lr": 0.1},
               {"loss": 1.0, "lr": 0.1}, {"step": 5, "loss": "1.0"}, {"step": 2.5, "loss": 1.0},
               {"step": True, "loss": 1.0}, {"epoch": 1, "train_loss": 1.0},
               {"epoch": "1", "step": 5, "train_loss": 1.0}, {"epoch": 1, "step": 5, "train_loss": None},
               [1, 2], None, {"foo": 1}]


def test_read_log_skips_records_with_missing_or_odd_fields(tmp_path, caplog):
    good = [{"step": 5, "loss": 1.0},  # no lr or grad_norm: the loss is still drawn
            {"step": 10, "loss": 0.8, "lr": None, "grad_norm": "x"},
            {"epoch": 1, "step": 10, "train_loss": 0.9, "dev_wer": None},
            {"epoch": 2, "step": 20.0, "train_loss": 0.7, "dev_wer": 0.5}]  # no dev_cer
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ODD_RECORDS + good) + "\n")
    with caplog.at_level("WARNING", logger="asr.plot"):
        lg = read_log(path)
    assert [r["step"] for r in lg.steps] == [5, 10] and [r["epoch"] for r in lg.epochs] == [1, 2]
    assert lg.bad_lines == len(ODD_RECORDS)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and str(path) in warnings[0] and f"{len(ODD_RECORDS)} of" in warnings[0]
    from asr.plot import plot_training

    assert plot_training([lg], tmp_path / "c.png").is_file()


def test_cli_plot_of_a_log_of_odd_records_is_an_error_naming_it(tmp_path, capsys):
    for k, rec in enumerate(ODD_RECORDS):
        (tmp_path / f"odd{k}.jsonl").write_text(json.dumps(rec) + "\n")
        assert main(["plot", str(tmp_path / f"odd{k}.jsonl")]) == 2, rec
        err = capsys.readouterr().err
        assert f"odd{k}.jsonl: holds no step or epoch records" in err and "Traceback" not in err, rec
    assert main(["plot", str(tmp_path / "odd0.jsonl"), str(tmp_path / "odd1.jsonl")]) == 2
    assert "odd0.jsonl, " in capsys.readouterr().err
