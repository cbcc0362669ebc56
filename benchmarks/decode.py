"""CTC decoders side by side on the same emissions and the same ARPA LM: WER and speed.

    .venv/bin/python benchmarks/decode.py --emissions exp/mini/decode/test.emissions.pt --lm exp/mini/lm/lm.arpa \\
        --tune exp/mini/lm/tune.json --beam-size 16

Emissions come from ``asr evaluate --save-emissions`` (or ``--model`` + ``--manifest``, computed once
and cached with ``--cache``, or ``--synthetic TEXT`` for CTC-like log-probs made without a model).
Rows, all at the same beam width, LM weight, word bonus, beam threshold and per-frame token floor:

- greedy: best path;
- asr beam (CPU): ``asr.decode.beam``, one process;
- asr beam-gpu: ``asr.decode.batched``, all utterances at once on the GPU when there is one, else on
  the CPU (float64 there, one torch thread unless ``--threads``);
- flashlight: torchaudio's ``ctc_decoder`` (flashlight-text, KenLM reading the same ARPA), with a
  lexicon of the LM's words (its usual set-up: it can only output LM words; its trie is smeared
  with unigram scores, a look-ahead like ours) and ``log_add`` so that it sums over alignments
  like the others. Its LM scores are log10, so its LM weight is alpha * ln 10. It has no per-frame
  log-prob floor, so it considers every token;
- pyctcdecode: ``build_ctcdecoder`` with KenLM and the LM's words as unigrams, one process. Its
  OOV offset is in log10 and scaled by alpha like ours, so it gets ``unk_penalty / ln 10``.

Speed is seconds of audio decoded per second, the median of ``--repeats`` runs: per wall-clock
second (``--clock wall``), or per second of this process's CPU time (``--clock cpu``), which other
jobs on a busy machine do not change; every decoder here runs in one thread, so on an idle machine
the two agree (beam-gpu on a GPU is always timed by the wall clock). LM loading and decoder
construction are outside the timing, and every run starts with cold LM caches. ``--json`` also
writes the rows.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asr.decode.batched import BatchedBeamSearchDecoder  # noqa: E402
from asr.decode.beam import DEFAULT_UNK_PENALTY, BeamSearchDecoder  # noqa: E402
from asr.decode.emissions import Emissions, load_emissions, synthetic_emissions  # noqa: E402
from asr.decode.greedy import GreedyDecoder  # noqa: E402
from asr.lm.arpa import NgramLM, read_arpa  # noqa: E402
from asr.lm.build import read_texts  # noqa: E402
from asr.lm.tune import cached_emissions, decode_emissions  # noqa: E402
from asr.metrics import score  # noqa: E402
from asr.text import CharTokenizer, Tokenizer, normalize  # noqa: E402

ALL = ("greedy", "beam", "beam-gpu", "flashlight", "pyctcdecode")


@dataclass
class Settings:
    beam_size: int
    alpha: float
    beta: float
    beam_threshold: float
    token_min_logp: float
    unk_penalty: float


@dataclass
class Row:
    decoder: str
    wer: float | None
    speed: float | None  # audio seconds per wall second (median run)
    seconds: float | None  # the median run's wall time
    note: str = ""


# A runner is built outside the timing (cold caches, LM loaded) and decodes every utterance when called.
Runner = Callable[[], list[str]]


def ours_cpu(em: Emissions, lm_path: str, s: Settings) -> Runner:
    lm = read_arpa(lm_path)  # a fresh model: its score cache starts empty
    dec = BeamSearchDecoder(em.tokenizer(), lm, beam_size=s.beam_size, alpha=s.alpha, beta=s.beta,
                            unk_penalty=s.unk_penalty, token_min_logp=s.token_min_logp,
                            beam_threshold=s.beam_threshold)
    return lambda: decode_emissions(dec, em)


def ours_batched(em: Emissions, lm_path: str, s: Settings, device: str, batch_size: int) -> Runner:
    lm = _shared_lm(lm_path)  # the tensor LM is built from it once; it keeps no score cache
    dec = BatchedBeamSearchDecoder(em.tokenizer(), lm, beam_size=s.beam_size, alpha=s.alpha, beta=s.beta,
                                   unk_penalty=s.unk_penalty, token_min_logp=s.token_min_logp,
                                   beam_threshold=s.beam_threshold, device=device)

    def run() -> list[str]:
        texts = decode_emissions(dec, em, batch_size=batch_size)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return texts
    return run


_LMS: dict[str, NgramLM] = {}


def _shared_lm(path: str) -> NgramLM:
    if path not in _LMS:
        _LMS[path] = read_arpa(path)
    return _LMS[path]


def _lexicon(lm: NgramLM, path: Path) -> None:
    """flashlight's lexicon: each LM word spelled in characters, then the word separator."""
    with open(path, "w") as f:
        for w in lm.words():
            f.write(f"{w}\t{' '.join(w)} |\n")


def flashlight(em: Emissions, lm_path: str, s: Settings, workdir: Path) -> Runner:
    from torchaudio.models.decoder import ctc_decoder

    tok = em.tokenizer()
    if tok.kind != "char":
        raise RuntimeError("needs a word-separator token (character tokenizer); this model uses " + tok.kind)
    lex = workdir / "lexicon.txt"
    if not lex.exists():
        _lexicon(_shared_lm(lm_path), lex)
    dec = ctc_decoder(lexicon=str(lex), tokens=list(tok.tokens), lm=lm_path, nbest=1, beam_size=s.beam_size,
                      beam_size_token=None, beam_threshold=s.beam_threshold, lm_weight=s.alpha * math.log(10),
                      word_score=s.beta, unk_score=-math.inf, sil_score=0.0, log_add=True,
                      blank_token=tok.tokens[0], sil_token=CharTokenizer.SPACE, unk_word="<unk>")

    def run() -> list[str]:
        texts = [""] * len(em)
        for idx, lp, lens in em.batches(64):
            for i, hyps in zip(idx, dec(lp.float().contiguous(), lens)):
                texts[i] = " ".join(w for w in hyps[0].words if w not in ("<unk>", "<s>", "</s>")) if hyps else ""
        return texts
    return run


def pyctcdecode(em: Emissions, lm_path: str, s: Settings) -> Runner:
    from pyctcdecode import build_ctcdecoder

    tok = em.tokenizer()
    labels = _pyctc_labels(tok)
    dec = build_ctcdecoder(labels, kenlm_model_path=lm_path, unigrams=_shared_lm(lm_path).words(), alpha=s.alpha,
                           beta=s.beta, unk_score_offset=s.unk_penalty / math.log(10))
    arrays = [x.float().numpy() for x in em.log_probs]

    def run() -> list[str]:
        return [dec.decode(a, beam_width=s.beam_size, beam_prune_logp=-s.beam_threshold,
                           token_min_logp=s.token_min_logp) for a in arrays]
    return run


def _pyctc_labels(tok: Tokenizer) -> list[str]:
    """pyctcdecode's alphabet: "" for the blank, " " for a space token, "▁x" word pieces as they are."""
    labels = []
    for i, t in enumerate(tok.tokens):
        labels.append("" if i == 0 else " " if tok.is_space(i) else t)
    return labels


def timed(run: Callable[[], Runner], repeats: int, clock: Callable[[], float]) -> tuple[list[str], float]:
    """Build a runner and time it ``repeats`` times; (texts of the first run, median seconds)."""
    times, texts = [], None
    for _ in range(repeats):
        r = run()
        start = clock()
        out = r()
        times.append(clock() - start)
        texts = texts or out
    return texts, statistics.median(times)


def benchmark(em: Emissions, lm_path: str, s: Settings, decoders: list[str], repeats: int, device: str,
              batch_size: int, clock: str = "wall") -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        makers: dict[str, Callable[[], Runner]] = {
            "greedy": lambda: (lambda: decode_emissions(GreedyDecoder(em.tokenizer()), em)),
            "beam": lambda: ours_cpu(em, lm_path, s),
            "beam-gpu": lambda: ours_batched(em, lm_path, s, device, batch_size),
            "flashlight": lambda: flashlight(em, lm_path, s, Path(tmp)),
            "pyctcdecode": lambda: pyctcdecode(em, lm_path, s),
        }
        names = {"greedy": "greedy", "beam": "asr beam (CPU)", "beam-gpu": f"asr beam-gpu ({device})",
                 "flashlight": "torchaudio ctc_decoder (flashlight)", "pyctcdecode": "pyctcdecode"}
        for d in decoders:
            gpu = d == "beam-gpu" and device.startswith("cuda")
            timer = time.process_time if clock == "cpu" and not gpu else time.perf_counter
            try:
                texts, sec = timed(makers[d], repeats, timer)
            except (ImportError, RuntimeError, OSError) as e:
                rows.append(Row(names[d], None, None, None, f"not run: {type(e).__name__}: {e}"))
                continue
            wer = score(em.refs, texts).wer
            rows.append(Row(names[d], wer, em.audio_seconds / sec, sec, "wall clock" if gpu and clock == "cpu" else ""))
    return rows


def format_table(rows: list[Row], pyctc: Row | None) -> str:
    lines = ["| decoder | WER % | audio s / s | s (median) | speed vs pyctcdecode | note |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if r.wer is None:
            lines.append(f"| {r.decoder} | | | | | {r.note} |")
            continue
        ratio = f"{r.speed / pyctc.speed:.1f}x" if pyctc and pyctc.speed else ""
        lines.append(f"| {r.decoder} | {100 * r.wer:.2f} | {r.speed:,.0f} | {r.seconds:.3f} | {ratio} | {r.note} |")
    return "\n".join(lines)


def load_inputs(args: argparse.Namespace) -> Emissions:
    if args.emissions:
        return load_emissions(args.emissions)
    if args.synthetic:
        sents = [normalize(t) for t in read_texts([args.synthetic])]
        sents = [t for t in sents if t][: args.num_synthetic]
        return synthetic_emissions(CharTokenizer(), sents, noise=args.noise, confuse=args.confuse, seed=0)
    if args.model and args.manifest:
        return cached_emissions(args.cache, args.model, args.manifest, device="cpu")
    raise SystemExit("give --emissions, --model and --manifest, or --synthetic TEXT")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_argument_group("emissions (one of)")
    src.add_argument("--emissions", help="file from `asr evaluate --save-emissions`")
    src.add_argument("--model", help="model package (with --manifest)")
    src.add_argument("--manifest")
    src.add_argument("--cache", help="with --model: emissions cache file")
    src.add_argument("--synthetic", help="text or manifest: synthetic CTC-like emissions of its sentences")
    src.add_argument("--num-synthetic", type=int, default=200)
    src.add_argument("--noise", type=float, default=1.5)
    src.add_argument("--confuse", type=float, default=0.3)
    p.add_argument("--lm", required=True, help="ARPA word LM used by every LM decoder")
    p.add_argument("--tune", help="JSON from `asr lm tune`: its alpha and beta")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--beam-size", type=int, default=16)
    p.add_argument("--beam-threshold", type=float, default=20.0, help="drop beams this far below the best")
    p.add_argument("--token-min-logp", type=float, default=-8.0, help="per-frame token log-prob floor")
    p.add_argument("--unk-penalty", type=float, default=DEFAULT_UNK_PENALTY,
                   help="natural-log OOV penalty, times alpha (default: pyctcdecode's -10 in log10)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time by the wall clock, or by this process's CPU time (for a busy machine)")
    p.add_argument("--decoders", default=",".join(ALL), help=f"comma-separated, from {', '.join(ALL)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto", help="for beam-gpu: cuda, cpu or auto")
    p.add_argument("--batch-size", type=int, default=256, help="utterances per beam-gpu batch")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.tune:
        best = json.loads(Path(args.tune).read_text())
        args.alpha, args.beta = best["alpha"], best["beta"]
    decoders = [d.strip() for d in args.decoders.split(",") if d.strip()]
    unknown = [d for d in decoders if d not in ALL]
    if unknown:
        p.error(f"unknown decoders {unknown}; choose from {', '.join(ALL)}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    em = load_inputs(args)
    s = Settings(args.beam_size, args.alpha, args.beta, args.beam_threshold, args.token_min_logp, args.unk_penalty)
    lm = _shared_lm(args.lm)
    rows = benchmark(em, args.lm, s, decoders, args.repeats, device, args.batch_size, args.clock)
    pyctc = next((r for r in rows if r.decoder == "pyctcdecode" and r.speed), None)

    frames = sum(x.shape[0] for x in em.log_probs)
    print(f"{len(em)} utterances, {em.audio_seconds:.1f} s of audio, {frames} frames, {em.log_probs[0].shape[1]} tokens; "
          f"LM {args.lm}: order {lm.order}, {len(lm.words())} words, n-grams {lm.counts()}")
    print(f"beam {s.beam_size}, alpha {s.alpha:g}, beta {s.beta:g}, beam threshold {s.beam_threshold:g}, "
          f"token floor {s.token_min_logp:g}, unk penalty {s.unk_penalty:.3g}; median of {args.repeats} runs "
          f"by the {args.clock} clock")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, torch {torch.__version__}, {args.threads} thread(s)"
          + (f", GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""))
    print()
    print(format_table(rows, pyctc))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": asdict(s), "utterances": len(em),
                                               "audio_seconds": em.audio_seconds, "rows": [asdict(r) for r in rows]},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
