"""Train an interpolated modified Kneser-Ney word n-gram model in pure Python, written as ARPA.

This is what KenLM's ``lmplz`` does, without a compiler (Chen & Goodman 1998; Heafield et al. 2013):

* sentences are normalised (``asr.text.normalize``) and padded as ``<s> w1 .. wk </s>``;
* the highest order keeps raw counts; a lower-order n-gram counts the distinct words seen to its
  left (its continuation count), except one starting with ``<s>``, which has nothing to its left
  and keeps its raw count;
* each order has three discounts D1, D2, D3+ from its counts-of-counts; when the text is too small
  for them to be valid (a count-of-count is zero, or a discount falls outside (0, k]) the fallback
  discounts (0.5, 1.0, 1.5) are used, like ``lmplz --discount_fallback``;
* p(w | h) = (a(h w) - D(a(h w))) / sum_x a(h x) + gamma(h) p(w | h minus its first word), with
  gamma(h) = (D1 N1(h) + D2 N2(h) + D3 N3+(h)) / sum_x a(h x); unigrams interpolate with the uniform
  distribution over the vocabulary, ``</s>`` and ``<unk>`` (``<s>`` is never predicted);
* gamma(h) is exactly the ARPA backoff weight of h, so for every history the probabilities of the
  vocabulary plus ``</s>`` and ``<unk>`` sum to one.

Pruning (``prune=[0, 1, 1]``) drops n-grams of order n whose raw count is at most ``prune[n-1]``
and recomputes each history's backoff weight so its distribution still sums to one.
Memory and time grow with the number of distinct n-grams: a few million n-grams (tens of millions of
words of text for a 3-gram) take minutes and a few GB; larger corpora want pruning or KenLM.
"""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from asr.lm.arpa import BOS, EOS, NEVER_LOG10, UNK, NgramLM, write_arpa
from asr.text import normalize

FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)


class LMBuildError(ValueError):
    pass


def read_texts(paths: Sequence[str | Path]) -> Iterator[str]:
    """Sentences from text files (one a line) or manifests (``.jsonl``, their ``text`` field)."""
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise LMBuildError(f"{path}: no such text file")
        with open(path, encoding="utf-8", errors="replace") as f:
            if path.suffix == ".jsonl":
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        yield json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise LMBuildError(f"{path}:{lineno}: expected a JSON object with a 'text' field") from None
            else:
                yield from f


def discounts(counts_of_counts: Counter, fallback: Sequence[float] = FALLBACK_DISCOUNTS) -> tuple[float, float, float]:
    """(D1, D2, D3+) from how many n-grams have (adjusted) count 1, 2, 3, 4; ``fallback`` when invalid."""
    t1, t2, t3, t4 = (counts_of_counts.get(k, 0) for k in (1, 2, 3, 4))
    if min(t1, t2, t3, t4) == 0:
        return tuple(fallback)  # type: ignore[return-value]
    y = t1 / (t1 + 2 * t2)
    d = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
    if not all(0 < dk <= k for k, dk in zip((1, 2, 3), d)):
        return tuple(fallback)  # type: ignore[return-value]
    return d  # type: ignore[return-value]


def _disc(d: tuple[float, float, float], c: int) -> float:
    return d[0] if c == 1 else d[1] if c == 2 else d[2]


def build_lm(texts: Iterable[str], order: int = 3, prune: Sequence[int] = (),
             fallback: Sequence[float] = FALLBACK_DISCOUNTS) -> NgramLM:
    """Modified Kneser-Ney n-gram model of ``order`` from raw sentences (normalised here)."""
    if order < 1:
        raise LMBuildError(f"order must be >= 1, got {order}")
    thresholds = list(prune) + [prune[-1] if prune else 0] * (order - len(prune))
    thresholds = thresholds[:order]
    if thresholds and thresholds[0] != 0:
        raise LMBuildError(f"unigrams cannot be pruned: the first --prune threshold must be 0, got {thresholds[0]}")
    if any(b < a for a, b in zip(thresholds, thresholds[1:])):
        # with non-decreasing thresholds every kept n-gram's prefix and suffix are kept too
        raise LMBuildError(f"--prune thresholds must not decrease with order, got {thresholds}")

    vocab = [UNK, BOS, EOS]
    word_id = {w: i for i, w in enumerate(vocab)}
    unk, bos, eos = 0, 1, 2
    raw: list[Counter] = [Counter() for _ in range(order)]
    n_sent = 0
    for line in texts:
        words = normalize(line).split()
        if not words:
            continue
        n_sent += 1
        ids = [bos]
        for w in words:
            i = word_id.get(w)
            if i is None:
                i = word_id[w] = len(vocab)
                vocab.append(w)
            ids.append(i)
        ids.append(eos)
        for n in range(1, order + 1):
            c = raw[n - 1]
            for s in range(len(ids) - n + 1):
                c[tuple(ids[s:s + n])] += 1
    if n_sent == 0:
        raise LMBuildError("no text to train on (every line is empty after normalization)")

    # adjusted counts: raw at the top order and for n-grams starting with <s>, else continuation counts
    adjusted: list[dict[tuple[int, ...], int]] = [dict() for _ in range(order)]
    adjusted[order - 1] = dict(raw[order - 1])
    for n in range(order - 1, 0, -1):
        left = Counter(g[1:] for g in raw[n])
        adjusted[n - 1] = {g: (c if g[0] == bos else left[g]) for g, c in raw[n - 1].items()}
    # <s> is only ever a context
    adjusted[0].pop((bos,), None)

    disc = [discounts(Counter(adjusted[n].values()), fallback) for n in range(order)]
    predicted = len(vocab) - 1  # every word, </s> and <unk>; not <s>

    probs: list[dict[tuple[int, ...], float]] = [dict() for _ in range(order)]  # linear probabilities
    gammas: list[dict[tuple[int, ...], float]] = [dict() for _ in range(order)]  # keyed by context order

    # unigrams
    d = disc[0]
    total = sum(adjusted[0].values())
    gamma0 = sum(_disc(d, c) for c in adjusted[0].values()) / total
    for w in range(len(vocab)):
        if w == bos:
            continue
        c = adjusted[0].get((w,), 0)
        probs[0][(w,)] = (max(c - _disc(d, c), 0.0) if c else 0.0) / total + gamma0 / predicted

    def lower(ctx: tuple[int, ...], w: int, n: int) -> float:
        """p(w | ctx) from the model of orders < n (ctx has n-2 words), following backoffs."""
        bow = 1.0
        for s in range(len(ctx) + 1):
            h = ctx[s:]
            p = probs[len(h)].get(h + (w,))
            if p is not None:
                return bow * p
            bow *= gammas[len(h)].get(h, 1.0)
        return bow * probs[0][(unk,)]

    for n in range(2, order + 1):
        d = disc[n - 1]
        by_ctx: dict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)
        for g, c in adjusted[n - 1].items():
            by_ctx[g[:-1]].append((g[-1], c))
        for ctx, children in by_ctx.items():
            s = sum(c for _, c in children)
            gamma = sum(_disc(d, c) for _, c in children) / s
            gammas[n - 1][ctx] = gamma
            tail = ctx[1:]
            for w, c in children:
                probs[n - 1][ctx + (w,)] = (c - _disc(d, c)) / s + gamma * lower(tail, w, n)

    if any(thresholds):
        _prune(probs, gammas, raw, thresholds, lower)

    logp: list[dict[tuple[int, ...], float]] = []
    logb: list[dict[tuple[int, ...], float]] = []
    for n in range(order):
        lp = {g: math.log10(p) for g, p in probs[n].items()}
        if n == 0:
            lp[(bos,)] = NEVER_LOG10
        logp.append(lp)
        # the backoff of an n-gram is gamma of it used as a context one order up
        lb = {}
        if n + 1 < order:
            for ctx, gamma in gammas[n + 1].items():
                if ctx in lp and gamma != 1.0:
                    lb[ctx] = math.log10(gamma)
        logb.append(lb)
    return NgramLM(order, vocab, logp, logb)


def _prune(probs: list[dict], gammas: list[dict], raw: list[Counter], thresholds: list[int], lower) -> None:
    """Drop rare n-grams and renormalise each history's backoff over what is left, order by order
    (lower orders first, since a history's backoff depends on the pruned lower-order model)."""
    order = len(probs)
    for n in range(2, order + 1):
        thr = thresholds[n - 1]
        if thr > 0:
            for g in [g for g in probs[n - 1] if raw[n - 1][g] <= thr]:
                del probs[n - 1][g]
        kept: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for g in probs[n - 1]:
            kept[g[:-1]].append(g[-1])
        for ctx in list(gammas[n - 1]):
            children = kept.get(ctx, [])
            num = 1.0 - sum(probs[n - 1][ctx + (w,)] for w in children)
            den = 1.0 - sum(lower(ctx[1:], w, n) for w in children)
            gammas[n - 1][ctx] = max(num, 1e-12) / max(den, 1e-12)


def build_arpa(paths: Sequence[str | Path], out: str | Path, order: int = 3, prune: Sequence[int] = ()) -> NgramLM:
    """Read sentences from ``paths``, train, write ``out`` as ARPA and return the model."""
    lm = build_lm(read_texts(paths), order=order, prune=prune)
    write_arpa(lm, out)
    return lm
