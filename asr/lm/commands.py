"""``asr lm build`` (text -> ARPA n-gram LM) and ``asr lm tune`` (LM weight and word bonus on a dev set)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Iterator

from asr.argtypes import positive_int
from asr.skipped import report_skipped
from asr.text import normalize

DEFAULT_ALPHAS = "0.25,0.5,0.75,1.0,1.5"
DEFAULT_BETAS = "0,0.5,1,2,3"


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _without(sentences: Iterator[str], excluded: set[str], dropped: list[int]) -> Iterator[str]:
    """``sentences`` but those in ``excluded`` (normalised); counts what it drops in ``dropped[0]``."""
    for s in sentences:
        if normalize(s) in excluded:
            dropped[0] += 1
        else:
            yield s


def cmd_build(args: argparse.Namespace) -> int:
    from asr.lm.arpa import write_arpa
    from asr.lm.build import build_lm, read_texts

    start = time.perf_counter()
    texts = read_texts(args.text)
    dropped = [0]
    if args.exclude:
        # keep dev/test sentences out of the LM, or its WER gain is partly memorisation
        excluded = {normalize(t) for t in read_texts(args.exclude)} - {""}
        texts = _without(texts, excluded, dropped)
    lm = build_lm(texts, order=args.order, prune=args.prune or ())
    write_arpa(lm, args.output)
    counts = " ".join(f"{n}={c}" for n, c in enumerate(lm.counts(), 1))
    note = f", {dropped[0]} lines of --exclude text left out" if args.exclude else ""
    print(f"{args.output}: {lm.order}-gram modified Kneser-Ney, {len(lm.words())} words, n-grams {counts}"
          f"{note} ({time.perf_counter() - start:.1f} s)")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    import torch

    from asr.lm.tune import cached_emissions, format_grid, grid_search

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    problems: list[str] = []
    try:
        em = cached_emissions(args.emissions, args.model, args.manifest, problems=problems, device=device,
                              workers=args.workers)
    except ValueError:
        report_skipped(problems, "utterances")  # what was skipped on the way to the error (e.g. every file unreadable)
        raise
    kw = {"device": device} if args.decoder == "beam-gpu" else {"num_workers": args.decode_workers}
    res = grid_search(em, args.lm, args.alphas, args.betas, decoder=args.decoder, beam_size=args.beam_size, **kw)
    print(f"WER (%) on {len(em)} utterances, {res.num_words} words; {args.decoder}, beam {args.beam_size}, LM {args.lm}")
    print(format_grid(res))
    print(f"greedy {100 * res.greedy_wer:.2f}%  beam without LM {100 * res.no_lm_wer:.2f}%  "
          f"best: alpha {res.alpha:g} beta {res.beta:g} -> WER {100 * res.wer:.2f}%")
    out = Path(args.output) if args.output else Path(args.lm).with_name(Path(args.lm).name.split(".")[0] + ".tune.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    data = res.to_json() | {"lm": str(args.lm), "emissions": str(args.emissions) if args.emissions else None,
                            "model": str(args.model) if args.model else None,
                            "manifest": str(args.manifest) if args.manifest else None}
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"-> {out}")
    return report_skipped(problems, "utterances")


def _run(func):
    """Errors users can cause (bad text, ARPA, emissions, LM/tokenizer mismatch) end as one line."""
    def wrapped(args: argparse.Namespace) -> int:
        from asr.decode.emissions import EmissionsError
        from asr.lm.arpa import ArpaError
        from asr.lm.build import LMBuildError

        try:
            return func(args)
        except (LMBuildError, ArpaError, EmissionsError, ValueError, OSError) as e:
            print(f"asr lm {args.lm_command}: error: {e}", file=sys.stderr)
            return 2
    return wrapped


def add_lm_subparser(sub: argparse._SubParsersAction) -> None:
    """Add ``asr lm build`` and ``asr lm tune`` to the ``asr`` command's subparsers."""
    p = sub.add_parser("lm", help="word n-gram language models: build from text, tune LM weight and word bonus")
    lm_sub = p.add_subparsers(dest="lm_command", required=True)

    b = lm_sub.add_parser("build", help="train a modified Kneser-Ney n-gram LM on text, write ARPA")
    b.add_argument("text", nargs="+", help="text files (one sentence a line) or manifests (.jsonl: their text)")
    b.add_argument("-o", "--output", required=True, help="ARPA file to write (.gz: compressed)")
    b.add_argument("--order", type=int, default=3)
    b.add_argument("--prune", type=int, nargs="+", metavar="COUNT",
                   help="per order, drop n-grams seen at most COUNT times, e.g. 0 1 1 (unigrams are never pruned)")
    b.add_argument("--exclude", nargs="+", metavar="TEXT",
                   help="texts or manifests whose sentences must not be trained on (dev/test)")
    b.set_defaults(func=_run(cmd_build))

    t = lm_sub.add_parser("tune", help="grid search of LM weight (alpha) and word bonus (beta) on a dev manifest")
    t.add_argument("--lm", required=True, help="ARPA LM")
    t.add_argument("--model", help="model package (needed unless --emissions exists)")
    t.add_argument("--manifest", help="dev manifest (needed unless --emissions exists)")
    t.add_argument("--emissions", help="log-probs cache: read if present and computed with --model over --manifest, "
                                       "else written")
    t.add_argument("--alphas", type=_floats, default=_floats(DEFAULT_ALPHAS), help=f"LM weights (default {DEFAULT_ALPHAS})")
    t.add_argument("--betas", type=_floats, default=_floats(DEFAULT_BETAS), help=f"word bonuses (default {DEFAULT_BETAS})")
    t.add_argument("--decoder", default="beam", choices=["beam", "beam-gpu"])
    t.add_argument("--beam-size", type=positive_int, default=16)
    t.add_argument("--decode-workers", type=int, default=0, help="CPU processes for beam search")
    t.add_argument("--workers", type=int, default=0, help="audio loading processes")
    t.add_argument("--device", default="auto", help="cpu, cuda or auto (the model, and beam-gpu)")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    t.add_argument("-o", "--output", help="JSON with the best pair and the grid (default: <lm>.tune.json)")
    t.set_defaults(func=_run(cmd_tune))
