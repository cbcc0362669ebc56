"""Choose the LM weight (alpha) and word bonus (beta) by grid search on a dev set.

The model runs once: its log-probs over the dev manifest are computed (or read from a cache written
by ``asr evaluate --save-emissions`` or an earlier tune) and every (alpha, beta) pair only re-runs
the beam search over them. WER is corpus-level, scored like ``asr evaluate``.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from asr.decode import build_decoder
from asr.decode.emissions import Emissions, load_emissions, save_emissions
from asr.decode.greedy import GreedyDecoder
from asr.metrics import score

if TYPE_CHECKING:
    from asr.data.manifest import Utterance

log = logging.getLogger(__name__)


def model_sha256(path: str | Path) -> str:
    """SHA-256 of the model package file's bytes: what an emissions cache records of its model."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # (hashlib.file_digest needs Python 3.11)
            digest.update(block)
    return digest.hexdigest()


def compute_emissions(model: str | Path, utts: list[Utterance], device: str = "cpu", max_frames: int = 60000,
                      workers: int = 0, progress: bool = False, problems: list[str] | None = None) -> Emissions:
    """Run the model package ``model`` over ``utts``: per utterance log-probs (T_i, V). Audio that
    cannot be read is skipped, recorded in the result and appended to ``problems`` if given."""
    from asr.evaluate import decode_utterances
    from asr.package import load_package
    from asr.recognizer import Recognizer

    pkg = load_package(model)
    rec = Recognizer.from_package(pkg, device)
    decoded = decode_utterances(rec, GreedyDecoder(rec.tokenizer), utts, max_frames=max_frames, num_workers=workers,
                                keep_log_probs=True, progress=progress)
    if problems is not None:
        problems += decoded.problems
    kept = [u for u in utts if u.id in decoded.log_probs]
    return Emissions([u.id for u in kept], [decoded.log_probs[u.id] for u in kept], [u.text for u in kept],
                     rec.tokenizer.state(), decoded.audio_seconds, pkg.frame_shift, str(model), model_sha256(model),
                     [u.id for u in utts if u.id not in decoded.log_probs], decoded.problems)


def stale_reason(em: Emissions, cache: str | Path, model: str | Path | None,
                 utts: list[Utterance] | None) -> str | None:
    """Why the cached ``em`` does not fit ``model`` or the manifest's usable ``utts``; None when it fits
    (or when neither is given)."""
    if model is not None and Path(model).exists():
        if em.model_sha256 is not None:
            if em.model_sha256 != model_sha256(model):
                return f"it was computed with another model ({em.model}), not {model}"
        elif Path(model).stat().st_mtime > Path(cache).stat().st_mtime:
            return f"it is older than {model}"  # no digest recorded (older file, asr evaluate): go by time
    if utts is not None:
        want = {u.id for u in utts}
        have = set(em.ids) | set(em.skipped_ids)
        if have != want:
            return (f"its utterances are not the manifest's ({len(have - want)} of its {len(have)} are not in the "
                    f"manifest, {len(want - have)} of the manifest's {len(want)} are not in it)")
    return None


def cached_emissions(cache: str | Path | None, model: str | Path | None = None, manifest: str | Path | None = None,
                     *, problems: list[str] | None = None, **kw) -> Emissions:
    """Emissions from ``cache`` when it exists and fits ``model`` and ``manifest`` (see ``stale_reason``);
    else computed from them (and written to ``cache`` when given). Every utterance left out (bad manifest
    lines, unreadable audio, also those recorded in the cache) is appended to ``problems`` if given.
    ``kw`` go to ``compute_emissions``."""
    from asr.data.manifest import read_manifest

    utts = read_manifest(manifest, problems=problems) if manifest is not None else None
    if cache is not None and Path(cache).exists():
        em = load_emissions(cache)
        why = stale_reason(em, cache, model, utts)
        if why is None:
            log.info("emissions of %d utterances read from %s", len(em), cache)
            if problems is not None:
                problems += em.problems
            return em
        if model is None or utts is None:
            raise ValueError(f"{cache} does not fit: {why}; give --model and --manifest to compute it again")
        log.warning("%s does not fit: %s; computing the emissions again", cache, why)
    if model is None or utts is None:
        raise ValueError(f"no emissions file {cache}; give --model and --manifest to compute it" if cache
                         else "give --emissions, or --model and --manifest")
    em = compute_emissions(model, utts, problems=problems, **kw)
    if not len(em):
        raise ValueError(f"no utterance of {manifest} could be decoded")
    if cache is not None:
        save_emissions(cache, em.ids, em.log_probs, em.refs, em.tokenizer_state, em.audio_seconds, em.frame_shift_s,
                       model=em.model, model_sha256=em.model_sha256, skipped_ids=em.skipped_ids, problems=em.problems)
    return em


def decode_emissions(decoder, em: Emissions, batch_size: int = 64) -> list[str]:
    """Texts of every utterance of ``em`` decoded with ``decoder``, in ``em``'s order."""
    texts = [""] * len(em)
    for idx, lp, lens in em.batches(batch_size):
        for i, h in zip(idx, decoder(lp, lens)):
            texts[i] = h.text
    return texts


@dataclass
class TuneResult:
    alpha: float
    beta: float
    wer: float
    greedy_wer: float
    no_lm_wer: float  # the same beam search without the LM
    decoder: str
    beam_size: int
    num_utts: int
    num_words: int
    grid: list[dict] = field(default_factory=list)  # {"alpha", "beta", "wer"} for every pair tried

    def to_json(self) -> dict:
        return asdict(self)


def grid_search(em: Emissions, lm: str | Path, alphas: Sequence[float], betas: Sequence[float],
                decoder: str = "beam", beam_size: int = 16, progress: bool = True, **decoder_kw) -> TuneResult:
    """WER of every (alpha, beta) on ``em``; the best pair is the one with the lowest WER
    (ties: the smaller alpha, then the smaller beta, i.e. the least LM). ``decoder_kw`` go to
    ``build_decoder`` (``device``, ``num_workers``, pruning options)."""
    if not alphas or not betas:
        raise ValueError("give at least one alpha and one beta")
    tok = em.tokenizer()
    refs = em.refs
    greedy = score(refs, decode_emissions(GreedyDecoder(tok), em))
    plain = build_decoder(decoder, tok, None, beam_size=beam_size, **decoder_kw)
    try:
        no_lm = score(refs, decode_emissions(plain, em)).wer
    finally:
        getattr(plain, "close", lambda: None)()
    grid = []
    for a in alphas:
        for b in betas:
            start = time.perf_counter()
            dec = build_decoder(decoder, tok, str(lm), beam_size=beam_size, alpha=a, beta=b, **decoder_kw)
            try:
                s = score(refs, decode_emissions(dec, em))
            finally:
                getattr(dec, "close", lambda: None)()
            grid.append({"alpha": float(a), "beta": float(b), "wer": s.wer})
            if progress:
                log.info("alpha %.3g beta %.3g: WER %.2f%% (%.1f s)", a, b, 100 * s.wer, time.perf_counter() - start)
    best = min(grid, key=lambda g: (g["wer"], g["alpha"], g["beta"]))
    # words of the normalised references, as scored (not of the raw text)
    return TuneResult(best["alpha"], best["beta"], best["wer"], greedy.wer, no_lm, decoder, beam_size, len(em),
                      greedy.num_words, grid)


def format_grid(res: TuneResult) -> str:
    """A Markdown table of WER (%): alpha down, beta across; the best cell is starred."""
    alphas = sorted({g["alpha"] for g in res.grid})
    betas = sorted({g["beta"] for g in res.grid})
    cell = {(g["alpha"], g["beta"]): g["wer"] for g in res.grid}
    lines = ["| alpha \\ beta | " + " | ".join(f"{b:g}" for b in betas) + " |",
             "| --- |" + " --- |" * len(betas)]
    for a in alphas:
        row = []
        for b in betas:
            w = cell.get((a, b))
            mark = "*" if (a, b) == (res.alpha, res.beta) else ""
            row.append("" if w is None else f"{100 * w:.2f}{mark}")
        lines.append(f"| {a:g} | " + " | ".join(row) + " |")
    return "\n".join(lines)
