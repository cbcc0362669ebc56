"""recipes/librispeech/run.sh end to end on a miniature corpus in LibriSpeech's exact layout.

``ROOT/subset/speaker/chapter/speaker-chapter-NNNN.flac`` with ``speaker-chapter.trans.txt`` beside
them, spoken by espeak-ng voices (tones when espeak-ng is missing), and a tiny model: this checks
that every stage runs, hands the next one what it needs, and that the results hold sane numbers.
Not that the model learns.
"""
from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import have_espeak, write_audio

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "librispeech" / "run.sh"

SENTENCES = [
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG", "A STITCH IN TIME SAVES NINE",
    "ALL THAT GLITTERS IS NOT GOLD", "THE EARLY BIRD CATCHES THE WORM", "ACTIONS SPEAK LOUDER THAN WORDS",
    "EVERY CLOUD HAS A SILVER LINING", "HONESTY IS THE BEST POLICY", "TWO HEADS ARE BETTER THAN ONE",
    "IT'S NEVER TOO LATE TO LEARN", "ROME WAS NOT BUILT IN A DAY",
]
# subset -> speaker -> (chapter, espeak voice); two training subsets, so they must be pooled.
LAYOUT = {
    "train-clean-100": {"103": ("1240", "en-us+m3"), "1034": ("121119", "en+f2")},
    "train-other-500": {"20": ("205", "en-gb+m5")},
    "dev-clean": {"84": ("121123", "en-us+f3")},
    "test-clean": {"1089": ("134686", "en+m7")},
}
PER_CHAPTER = 3
TINY = ["model.hidden=16", "model.layers=1", "model.subsample_channels=4", "tokenizer.vocab_size=40",
        "train.epochs=1", "train.max_frames=6000", "train.num_workers=0", "train.cmvn_utts=20",
        "train.warmup_steps=2", "train.threads=1", "train.save_every_steps=0", "train.log_every=1"]


def speak(text: str, voice: str, path: Path, seed: int) -> None:
    """16 kHz FLAC of ``text``: espeak-ng's voice when there is one, else a short test signal."""
    if have_espeak():
        from asr.audio import to_mono_16k
        from asr.data.synth import Voice, synthesize

        data, sr = synthesize(Voice("espeak", voice), text, 1.3, 1.0)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), to_mono_16k(data, sr).numpy(), 16000, format="FLAC", subtype="PCM_16")
    else:
        write_audio(path, 0.3 + 0.05 * len(text.split()), seed=seed, subtype="PCM_16")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, dict[str, str]]]:
    """LibriSpeech-layout root and, per subset, utterance id -> transcript."""
    root = tmp_path_factory.mktemp("LibriSpeech")
    texts: dict[str, dict[str, str]] = {}
    k = 0
    for subset, speakers in LAYOUT.items():
        texts[subset] = {}
        for spk, (chapter, voice) in speakers.items():
            folder = root / subset / spk / chapter
            lines = []
            for n in range(PER_CHAPTER):
                uid, text = f"{spk}-{chapter}-{n:04d}", SENTENCES[k % len(SENTENCES)]
                k += 1
                speak(text, voice, folder / f"{uid}.flac", seed=k)
                lines.append(f"{uid} {text}")
                texts[subset][uid] = text
            (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root, texts


def recipe(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(["bash", str(RECIPE), *args], capture_output=True, text=True, env=env, timeout=300)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"recipe failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_every_stage_on_a_miniature_corpus(corpus, tmp_path):
    root, texts = corpus
    data, exp = tmp_path / "data", tmp_path / "exp"
    common = [str(root), *LAYOUT, "--ngpu", "0", "--data", str(data), "--exp", str(exp), "--beam-size", "4",
              "--lm-order", "2", "--alphas", "0.5,1", "--betas", "0,1", "--no-report", "--decode-workers", "0",
              "--audio-format", "wav"]  # FLAC shards are what every other recipe test trains on

    out = ok(recipe(*common, "--stop-stage", "3", "--", *TINY))
    for n in range(4):
        assert f"== stage {n}:" in out

    # stage 0: one manifest per subset, the training subsets pooled
    for subset, utts in texts.items():
        lines = [json.loads(x) for x in (data / f"{subset}.jsonl").read_text().splitlines()]
        assert {u["id"]: u["text"] for u in lines} == utts
        assert all(u["duration"] > 0.2 and Path(u["audio"]).is_file() for u in lines)
    train_ids = [json.loads(x)["id"] for x in (data / "train.jsonl").read_text().splitlines()]
    assert sorted(train_ids) == sorted([*texts["train-clean-100"], *texts["train-other-500"]])

    # stage 1 -> 3: the units trained on the transcripts are the model's tokenizer
    from asr.package import load_package
    from asr.text import load_sentencepiece

    units = load_sentencepiece(data / "lang" / "units.model")
    assert 29 <= units.vocab_size <= 41  # letters, apostrophe, word marker, blank; at most 40 + blank
    assert units.decode(units.encode(SENTENCES[3])) == SENTENCES[3]  # a training sentence
    assert json.loads((data / "shards" / "train.index.json").read_text())["num_utts"] == len(train_ids)
    members = [m for t in (data / "shards").glob("train-*.tar") for m in tarfile.open(t).getnames()]
    assert sum(m.endswith(".wav") for m in members) == len(train_ids)
    pkg = load_package(exp / "model.pt")
    assert pkg.tokenizer.kind == "sentencepiece" and pkg.tokenizer.tokens == units.tokens
    summary = json.loads((exp / "train_summary.json").read_text())
    assert summary["epochs"] == 1 and summary["steps"] >= 1

    # stages 4-5: the word LM from the training transcripts, its weights tuned on dev-clean
    out = ok(recipe(*common, "--stage", "4", "--stop-stage", "5"))
    from asr.lm import read_arpa

    lm = read_arpa(data / "lm" / "lm.arpa")
    # dev/test sentences are left out: FOX is only in a training sentence that test-clean repeats
    assert lm.order == 2 and "SILVER" in lm.vocab and "FOX" not in lm.vocab
    tune = json.loads((exp / "decode" / "lm_tune.json").read_text())
    assert len(tune["grid"]) == 4 and (tune["alpha"], tune["beta"]) in {(0.5, 0), (0.5, 1), (1, 0), (1, 1)}
    assert tune["num_utts"] == PER_CHAPTER and tune["manifest"].endswith("dev-clean.jsonl")

    # stages 6-7: greedy and beam + LM on each dev/test set, and the table
    out = ok(recipe(*common, "--stage", "6", "--", *TINY))
    res = json.loads((exp / "results.json").read_text())
    assert res["set"] == "test-clean" and res["decoder"] == "beam"
    for subset in ("dev-clean", "test-clean"):
        words = sum(len(t.split()) for t in texts[subset].values())
        for dec in ("greedy", "beam-lm"):
            r = res["by_set"][subset][dec]
            assert r["num_utts"] == PER_CHAPTER and r["num_words"] == words
            assert 0.0 <= r["cer"] <= r["wer"] + 1.0 and 0.0 <= r["wer"] <= 3.0
            assert r["audio_seconds"] > 0 and r["num_skipped"] == 0
            assert len((exp / "decode" / f"{subset}-{dec}" / "recogs.txt").read_text().splitlines()) == PER_CHAPTER
            assert f"| {subset} | {dec} |" in out
    assert res["wer"] == res["by_set"]["test-clean"]["beam-lm"]["wer"]
    assert res["lm_weights"]["alpha"] == tune["alpha"] and res["lm_weights"]["beta"] == tune["beta"]
    assert (exp / "results.md").read_text().count("| dev-clean |") == 2

    # a rerun with the same options redoes nothing
    again = ok(recipe(*common, "--", *TINY))
    assert again.count("done before with the same options, skipped") == 8
    # another --data folder is not the same options: stage 0 fills it
    moved = ok(recipe(*common, "--data", str(tmp_path / "data2"), "--stop-stage", "0", "--", *TINY))
    assert "done before" not in moved and (tmp_path / "data2" / "train.jsonl").is_file()
    # --lm-prune "C2": bigrams seen once are dropped (asr lm build's first threshold is the unigrams')
    full = len(lm.probs[1])
    ok(recipe(*common, "--stage", "4", "--stop-stage", "4", "--lm-prune", "1"))
    pruned = read_arpa(data / "lm" / "lm.arpa")
    assert len(pruned.probs[0]) == len(lm.probs[0]) and len(pruned.probs[1]) < full


def test_bad_arguments_are_refused_before_any_work(corpus, tmp_path):
    root, _ = corpus
    proc = recipe(str(root), "train-clean-100", "dev-other", "--data", str(tmp_path / "d"), "--exp", str(tmp_path / "e"))
    assert proc.returncode == 1 and "dev-other: no such subset folder" in proc.stderr
    proc = recipe(str(root), "dev-clean", "--data", str(tmp_path / "d"), "--exp", str(tmp_path / "e"))
    assert proc.returncode == 1 and "no train-* subset" in proc.stderr
    proc = recipe(str(tmp_path / "nowhere"))
    assert proc.returncode == 1 and "is not a folder" in proc.stderr
    for args, msg in [(["--stage", "abc"], "--stage must be a whole number >= 0, not 'abc'"),
                      (["--stop-stage"], "option --stop-stage needs a value"), (["--bogus"], "unknown option --bogus"),
                      (["--audio-format", "mp3"], "--audio-format must be flac or wav, got 'mp3'")]:
        proc = recipe(str(root), "--data", str(tmp_path / "d"), "--exp", str(tmp_path / "e"), *args)
        assert proc.returncode == 2 and msg in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    # the usage is found wherever the recipe is started from (the recipe cds to the repository)
    proc = subprocess.run(["bash", os.path.relpath(RECIPE, tmp_path), "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("LibriSpeech:") and "--stop-stage" in proc.stdout
    assert not (tmp_path / "d").exists()


def test_training_uses_the_units_file_it_is_given(tmp_path):
    from asr.config import load_config
    from asr.text import TokenizerError, build_tokenizer
    from asr.train import fit_tokenizer

    units = build_tokenizer("sentencepiece", SENTENCES * 3, 40)
    (tmp_path / "units.model").write_bytes(units.model_proto)
    cfg = load_config(None, ["tokenizer.kind=sentencepiece", f"tokenizer.model={tmp_path / 'units.model'}"])
    assert fit_tokenizer(cfg, []).tokens == units.tokens  # no shards read: the file is the tokenizer
    with pytest.raises(TokenizerError, match="needs tokenizer.kind=sentencepiece"):
        fit_tokenizer(load_config(None, [f"tokenizer.model={tmp_path / 'units.model'}"]), [])
    with pytest.raises(TokenizerError, match="cannot read"):
        fit_tokenizer(load_config(None, ["tokenizer.kind=sentencepiece", f"tokenizer.model={tmp_path / 'no.model'}"]), [])
