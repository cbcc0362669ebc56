"""CTC prefix beam search on the CPU, with optional word n-gram LM fusion and a process pool.

The search keeps, for every surviving prefix (a collapsed token sequence), the log-probability of
all alignments ending in blank (``pb``) and ending in its last token (``pnb``) apart, so a repeated
token is merged only when no blank separates it (``A A`` -> ``A``, ``A _ A`` -> ``A A``). Each frame
every prefix may stay (blank, or a repeat of its last token) or grow by one candidate token; the
``beam_size`` best prefixes survive, ranked by

    log P_ctc(prefix) + alpha * log P_lm(words) + beta * (number of words)     (natural logs)

Candidate tokens per frame are the ``token_top_k`` most probable non-blank tokens whose
log-prob is at least ``token_min_logp``; prefixes scoring ``beam_threshold`` below the best are
dropped. A beam of one without an LM is the single best path, i.e. exactly the greedy decoder
(a width-1 *prefix* search would sum over alignments and can differ from greedy).

LM fusion (``LMFusion``) is word level: words end at the space token (``"|"`` for characters,
``"▁"`` for SentencePiece), at a word-start piece (``"▁x"`` closes the word before it), and at the end
of the utterance, where ``</s>`` is scored too. A partial word is followed through a character
trie of the LM vocabulary, so a word that can no longer be in the vocabulary pays the
out-of-vocabulary penalty as soon as it leaves the trie rather than at its end; words outside the
vocabulary are scored as ``<unk>``. Until a word ends, its prefix carries a look-ahead score (the
best unigram log-prob of the words it can still become), replaced by the real score at its end.
Everything the LM adds is multiplied by ``alpha`` or ``beta``, so ``alpha = beta = 0`` gives
exactly the search without an LM.

Speed comes from doing per frame only what the frame needs: prefixes are interned ints (a child
is looked up once per (prefix, token) and keeps its LM state, trie node and LM score), LM scores
are cached per (state, word), frames with no candidate token skip selection, and candidate
tokens for all frames are found in one vectorised top-k.
"""
from __future__ import annotations

import heapq
import math
import multiprocessing as mp
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from asr.decode.greedy import greedy_decode
from asr.decode.types import Hypothesis
from asr.lm.arpa import LOG10, NgramLM, read_arpa
from asr.text import BLANK, Tokenizer

NEG = float("-inf")
_exp, _log1p = math.exp, math.log1p

# token kinds for word boundaries
CONT, SPACE, START = 0, 1, 2
ROOT, OOV = 0, -1  # trie nodes: empty partial word; a partial word no LM word starts with
# An out-of-vocabulary word pays alpha * this (natural log) on top of alpha * log p(<unk>):
# pyctcdecode's default offset of -10 in log10 units.
DEFAULT_UNK_PENALTY = -10.0 * math.log(10.0)


class LMMismatchError(ValueError):
    """The LM's words cannot be written with the tokenizer's units."""


@lru_cache(maxsize=4)
def load_lm(path: str) -> NgramLM:
    """Read an ARPA file once per process (the decoder, tuner and benchmark share it)."""
    return read_arpa(path)


def token_kinds(tokenizer: Tokenizer) -> tuple[list[int], list[str]]:
    """Per token id: CONT / SPACE / START, and the characters it adds to the current word."""
    kinds, chars = [], []
    for i, tok in enumerate(tokenizer.tokens):
        if i == BLANK:
            kinds.append(CONT)
            chars.append("")
        elif tokenizer.is_space(i):
            kinds.append(SPACE)
            chars.append("")
        elif tokenizer.is_word_start(i):
            kinds.append(START)
            chars.append(tok[1:])
        else:
            kinds.append(CONT)
            chars.append(tok)
    return kinds, chars


def check_lm_matches(lm: NgramLM, tokenizer: Tokenizer, name: str = "LM") -> None:
    """Refuse an LM whose words the tokenizer cannot spell (wrong case, another alphabet, empty)."""
    _, chars = token_kinds(tokenizer)
    alphabet = set("".join(chars))
    words = lm.words()
    if not words:
        raise LMMismatchError(f"{name}: the LM has no words besides <s>, </s> and <unk>")
    spellable = [w for w in words if set(w) <= alphabet]
    frac = len(spellable) / len(words)
    if frac >= 0.9:
        return
    bad = [w for w in words if not set(w) <= alphabet][:5]
    lower = sum(1 for w in words if w != w.upper())
    if frac < 0.5:
        if lower > len(words) / 2 and sum(1 for w in words if set(w.upper()) <= alphabet) > len(words) / 2:
            raise LMMismatchError(
                f"{name}: the LM's words are lower case (e.g. {bad[:3]}) but the {tokenizer.kind} tokenizer writes "
                f"normalised upper case; rebuild it from normalised text with `asr lm build`")
        raise LMMismatchError(
            f"{name}: only {len(spellable)} of the LM's {len(words)} words can be spelled with the {tokenizer.kind} "
            f"tokenizer's units (e.g. {bad}); the LM and the model's tokenizer do not match")
    warnings.warn(f"{name}: {len(words) - len(spellable)} of {len(words)} LM words cannot be spelled "
                  f"by the tokenizer (e.g. {bad}); they will never be recognised", stacklevel=2)


class LMFusion:
    """A word LM seen through a tokenizer: word boundaries, a vocabulary trie, and cached scores.

    A decoding state is (LM state, trie node). ``extend`` gives the state after one more token and
    the score it adds; ``finish`` closes the last word and scores ``</s>``. A completed word adds
    alpha * log p(word | history) + beta; a partial word that leaves the vocabulary adds
    alpha * unk_penalty (once) and is scored as ``<unk>`` when it ends.

    Look-ahead (``lookahead=True``, as flashlight's trie smearing): while a word is being spelled
    its prefix carries alpha * (the best unigram log-prob of an LM word it can still become), and
    an out-of-vocabulary prefix alpha * log p(<unk>); the estimate is swapped for the real score
    when the word ends. The estimates telescope, so a finished hypothesis scores exactly the same;
    only the ranking of unfinished words changes, and prefixes of likely words survive pruning.
    """

    def __init__(self, lm: NgramLM, tokenizer: Tokenizer, alpha: float, beta: float,
                 unk_penalty: float = DEFAULT_UNK_PENALTY, name: str = "LM", lookahead: bool = True):
        if alpha < 0 or unk_penalty > 0:
            raise ValueError(f"alpha must be >= 0 and unk_penalty <= 0; got alpha={alpha}, unk_penalty={unk_penalty}")
        check_lm_matches(lm, tokenizer, name)
        self.lm = lm
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.unk_penalty = float(unk_penalty)
        self.oov_cost = self.alpha * self.unk_penalty
        self.lookahead = bool(lookahead)
        self.kinds, self.chars = token_kinds(tokenizer)
        self.V = len(self.kinds)
        self.unk = lm.unk_id  # -1 when the LM has no <unk>: NgramLM then scores OOV at -100 log10
        # character trie of the vocabulary: node -> {char: node}, node -> word id (-1: not a word)
        self.children: list[dict[str, int]] = [{}]
        self.node_word: list[int] = [-1]
        best = [0.0]  # per node, the best unigram log10 p of a word below it (0 at the root)
        unigram = lm.probs[0]
        for w in lm.words():
            wid = lm.word_id[w]
            lp = unigram.get((wid,), lm.unk_log10)
            node = ROOT
            for ch in w:
                nxt = self.children[node].get(ch)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][ch] = nxt
                    self.children.append({})
                    self.node_word.append(-1)
                    best.append(lp)
                elif lp > best[nxt]:
                    best[nxt] = lp
                node = nxt
            self.node_word[node] = wid
        scale = self.alpha * LOG10 if self.lookahead else 0.0
        # la[node]: the look-ahead score a partial word at ``node`` carries; la_oov: one outside the trie
        self.la = [min(x, 0.0) * scale for x in best]
        self.la_oov = min(lm.unk_log10, 0.0) * scale
        # the most a word boundary can add after a partial word at a node (prunes children unseen)
        self.gain = [max(self.beta, 0.0) - x for x in self.la]
        self.gain_oov = max(self.beta, 0.0) - self.la_oov
        self._walk_cache: dict[int, int] = {}
        self._step_cache: dict[int, tuple[int, float]] = {}

    def begin(self) -> tuple[int, int]:
        return self.lm.begin_state(), ROOT

    def _walk(self, node: int, token: int) -> int:
        """Trie node after spelling ``token``'s characters from ``node`` (OOV once off the trie)."""
        key = node * self.V + token
        hit = self._walk_cache.get(key)
        if hit is None:
            hit = node
            for ch in self.chars[token]:
                hit = self.children[hit].get(ch, OOV)
                if hit == OOV:
                    break
            self._walk_cache[key] = hit
        return hit

    def step(self, node: int, token: int) -> tuple[int, float]:
        """Inside a word (``node`` in the trie, ``token`` of kind CONT): (next node, added score)."""
        key = node * self.V + token
        hit = self._step_cache.get(key)
        if hit is None:
            nxt = self._walk(node, token)
            if nxt == OOV:
                hit = (OOV, self.oov_cost + self.la_oov - self.la[node])
            else:
                hit = (nxt, self.la[nxt] - self.la[node])
            self._step_cache[key] = hit
        return hit

    def _close(self, state: int, node: int) -> tuple[int, float]:
        """Score the word ending at ``node``; returns (next LM state, added score)."""
        if node == ROOT:
            return state, 0.0
        if node == OOV:
            add, word = -self.la_oov, self.unk
        else:
            add, word = -self.la[node], self.node_word[node]
            if word < 0:
                add += self.oov_cost  # a prefix of LM words, but no word itself: OOV only now
                word = self.unk
        lp, state = self.lm.score(state, word)
        # a log-prob above 0 only comes from an unnormalised LM; capping it keeps ``gain`` a bound
        return state, add + self.alpha * min(lp, 0.0) + self.beta

    def extend(self, state: int, node: int, token: int) -> tuple[int, int, float]:
        """(LM state, trie node) + one non-blank token -> (LM state, trie node, added score)."""
        kind = self.kinds[token]
        if kind == CONT:
            if node == OOV:
                return state, OOV, 0.0
            nxt, add = self.step(node, token)
            return state, nxt, add
        state, add = self._close(state, node)
        if kind == SPACE:
            return state, ROOT, add
        nxt = self._walk(ROOT, token)
        return state, nxt, add + (self.oov_cost + self.la_oov if nxt == OOV else self.la[nxt])

    def finish(self, state: int, node: int) -> float:
        """Score added at the end of the utterance: the last word and ``</s>``."""
        state, add = self._close(state, node)
        return add + self.alpha * self.lm.eos_score(state)


@dataclass(frozen=True)
class SearchOptions:
    beam_size: int = 10
    token_top_k: int | None = None  # candidate tokens per frame (None: all)
    token_min_logp: float | None = -8.0  # candidate tokens need at least this log-prob (None: any)
    beam_threshold: float | None = 30.0  # drop prefixes this far below the best (None: never)


def candidate_mask(log_probs: Tensor, opts: SearchOptions) -> Tensor:
    """log_probs (..., T, V) -> bool (..., T, V-1): which non-blank tokens (id - 1) may start a new
    prefix at each frame: log-prob at least ``token_min_logp`` and among the ``token_top_k`` best
    (a tie with the k-th best is kept too, so the set never depends on sort order)."""
    nonblank = log_probs[..., 1:]
    if opts.token_min_logp is None:
        mask = torch.ones_like(nonblank, dtype=torch.bool)
    else:
        mask = nonblank >= opts.token_min_logp
    k = opts.token_top_k
    if k is not None and k < nonblank.shape[-1]:
        kth = nonblank.topk(max(k, 1), dim=-1).values[..., -1:]
        mask &= nonblank >= kth
    return mask


def candidate_lists(log_probs: Tensor | np.ndarray, lengths: Tensor | None, opts: SearchOptions) -> list[list[list[int]]]:
    """log_probs (B, T, V), lengths (B,) -> per utterance, per frame, the candidate token ids.

    The same set as ``candidate_mask``, computed with numpy (several times faster than torch for
    these small reductions on the CPU)."""
    a = np.asarray(log_probs)
    B, T, V = a.shape
    nonblank = a[..., 1:]
    mask = nonblank >= opts.token_min_logp if opts.token_min_logp is not None else np.ones(nonblank.shape, bool)
    k = opts.token_top_k
    if k is not None and k < V - 1:
        kth = -np.partition(-nonblank, max(k, 1) - 1, axis=-1)[..., max(k, 1) - 1:max(k, 1)]
        mask &= nonblank >= kth
    if lengths is not None:
        mask &= (np.arange(T)[None, :] < np.asarray(lengths)[:, None])[..., None]
    flat = (np.nonzero(mask)[2] + 1).tolist()  # only the candidates themselves travel to Python
    counts = mask.sum(-1).tolist()
    out, o = [], 0
    empty: list[int] = []
    for b in range(B):
        n = T if lengths is None else int(lengths[b])
        frames = []
        for c in counts[b][:n]:
            if c:
                frames.append(flat[o:o + c])
                o += c
            else:
                frames.append(empty)
        out.append(frames)
    return out


def prefix_beam_search(log_probs: np.ndarray | Tensor, opts: SearchOptions, fusion: LMFusion | None = None,
                       cands: list[list[int]] | None = None, nbest: int = 1) -> list[tuple[list[int], list[int], float]]:
    """One utterance: log_probs (T, V) -> up to ``nbest`` (tokens, timesteps, score), best first.

    Timesteps: a prefix's last token is placed at the frame where the most probable of its paths
    seen so far emitted it; its earlier tokens keep the times they had when the prefix was created
    (so times always increase, and the batched decoder gives the same ones).

    ``cands`` (per frame, the candidate token ids) may be given precomputed (``candidate_lists``).
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    T, V = lp.shape
    if cands is None:
        cands = candidate_lists(lp[None], None, opts)[0]
    rows = lp.tolist()
    K = opts.beam_size
    thr = opts.beam_threshold
    log1p, exp = _log1p, _exp
    nlargest = heapq.nlargest

    # interned prefixes: parallel lists indexed by prefix id; 0 is the empty prefix
    p_last = [BLANK]
    p_parent = [-1]
    p_lm = [0.0]
    # Timesteps live in a tree of (time, up) nodes: p_tn[p] is the node of p's last token, whose
    # chain gives all its tokens' times. A merge that finds a more probable emission (p_emit: its
    # log-prob) adds a new node instead of editing the old one, which children may share.
    p_tn = [-1]
    p_emit = [0.0]
    tn_time: list[int] = []
    tn_up: list[int] = []
    if fusion is not None:
        s0, n0 = fusion.begin()
        p_state, p_node = [s0], [n0]
        extend, step, steps = fusion.extend, fusion.step, fusion._step_cache
        kinds, gains, gain_oov = fusion.kinds, fusion.gain, fusion.gain_oov
    kids: dict[int, int] = {}

    # the beam: one entry per prefix, [log P(ends in blank), log P(ends in its last token), slot, id],
    # best first; `member` maps prefix id -> entry; `parents` holds the members' parents
    root = [0.0, NEG, 0, 0]
    beam: list[list] = [root]
    member = {0: root}
    parents = {-1}
    for t in range(T):
        row = rows[t]
        lb = row[0]
        toks = cands[t]
        if not toks:
            # no token can start here: every prefix only stays, so the set is unchanged
            for e in beam:
                a, b = e[0], e[1]
                last = p_last[e[3]]
                e[1] = b + row[last] if last != BLANK else NEG
                if a < b:
                    a, b = b, a
                e[0] = (a if b == NEG else a + log1p(exp(b - a))) + lb
            continue
        tl = [(c, row[c]) for c in toks]
        top_lp = max(x[1] for x in tl) if len(tl) > 1 else tl[0][1]
        # One pass over the beam: each prefix stays (blank, or its last token repeated), updated in
        # place, and grows by each candidate token. Paths into a child that is itself in the beam
        # are merged after the pass; other children wait in `pending` with an upper bound on their
        # score. The beam is sorted best first, so `floor` (best so far minus the threshold) rises
        # early and most children are never looked at twice.
        cand: list[tuple[float, int, list]] = []
        pending = []
        merges = []
        moved = []
        best = NEG
        floor = NEG
        for i, e in enumerate(beam):
            a0, b0 = e[0], e[1]
            p = e[3]
            if a0 > b0:
                tot = a0 if b0 == NEG else a0 + log1p(exp(b0 - a0))
            else:
                tot = b0 + log1p(exp(a0 - b0))
            last = p_last[p]
            s_b = tot + lb
            s_nb = b0 + row[last] if last != BLANK else NEG
            e[0] = s_b
            e[1] = s_nb
            e[2] = i
            lm_p = p_lm[p]
            if s_b > s_nb:
                sc = (s_b if s_nb == NEG else s_b + log1p(exp(s_nb - s_b))) + lm_p
            else:
                sc = s_nb + log1p(exp(s_b - s_nb)) + lm_p
            cand.append((sc, p, e))
            if sc > best:
                best = sc
                if thr is not None:
                    floor = sc - thr
            # the most a token can add to the LM score: inside a word nothing (the look-ahead only
            # falls), at a word boundary the word's real score for its look-ahead, plus beta
            if fusion is None:
                gain = 0.0
            else:
                nd = p_node[p]
                gain = gain_oov if nd == OOV else gains[nd]
            if tot + lm_p + top_lp + gain < floor and p not in parents:
                continue
            base = p * V
            for c, lc in tl:
                v = (a0 if c == last else tot) + lc
                if v == NEG:
                    continue
                child = kids.get(base + c)
                if child is not None:
                    if child in member:
                        merges.append((child, v))
                        continue
                    ub = v + p_lm[child]
                elif fusion is None:
                    ub = v + lm_p
                elif kinds[c] == CONT:
                    # inside a word the trie step's score (look-ahead change, OOV penalty) is cached
                    if nd == OOV:
                        ub = v + lm_p
                    else:
                        hit = steps.get(nd * V + c)
                        if hit is None:
                            hit = step(nd, c)
                        ub = v + lm_p + hit[1]
                else:
                    ub = v + lm_p + gain
                if ub >= floor:
                    pending.append((ub, v, p, c))
        for child, v in merges:
            if v > p_emit[child]:
                p_emit[child] = v
                moved.append(child)  # re-timed after this frame's children took their parents' times
            f = member[child]
            x, y = (f[1], v) if f[1] > v else (v, f[1])
            f[1] = x if y == NEG else x + log1p(exp(y - x))
            x, y = (f[0], f[1]) if f[0] > f[1] else (f[1], f[0])
            sc = (x if y == NEG else x + log1p(exp(y - x))) + p_lm[child]
            cand[f[2]] = (sc, child, f)
            if sc > best:
                best = sc
        # A new prefix scoring below `floor` cannot survive: merges only raise the stays' scores, so
        # at least K of them beat it, or the best of them is more than `thr` above it. Skipping it
        # saves creating it (and its LM lookup) without changing the result.
        floor = best - thr if thr is not None else NEG
        if len(cand) >= K:
            kth = nlargest(K, cand)[-1][0]
            if kth > floor:
                floor = kth
        if pending:
            if len(pending) > 1:
                pending.sort(reverse=True)
            for ub, v, p, c in pending:
                if ub < floor:
                    break
                key = p * V + c
                child = kids.get(key)
                if child is None:
                    # score it before interning it: most new children fall below the floor
                    if fusion is None:
                        lm_c = p_lm[p]
                    else:
                        st, nd = p_state[p], p_node[p]
                        if kinds[c] == CONT:
                            # inside a word only the trie node (and its look-ahead) moves
                            if nd != OOV:
                                hit = steps.get(nd * V + c)
                                if hit is None:
                                    hit = step(nd, c)
                                nd, add = hit
                            else:
                                add = 0.0
                        else:
                            st, nd, add = extend(st, nd, c)
                        lm_c = p_lm[p] + add
                    sc = v + lm_c
                    if sc < floor:
                        continue
                    child = len(p_last)
                    kids[key] = child
                    p_last.append(c)
                    p_parent.append(p)
                    p_tn.append(len(tn_time))
                    tn_time.append(t)
                    tn_up.append(p_tn[p])
                    p_emit.append(v)
                    p_lm.append(lm_c)
                    if fusion is not None:
                        p_state.append(st)
                        p_node.append(nd)
                else:
                    sc = v + p_lm[child]
                    if sc < floor:
                        continue
                    p_tn[child] = len(tn_time)  # back in the beam: its old paths are gone
                    tn_time.append(t)
                    tn_up.append(p_tn[p])
                    p_emit[child] = v
                if thr is not None and sc - thr > floor:
                    floor = sc - thr
                cand.append((sc, child, [NEG, v, 0, child]))
        for child in moved:
            n = p_tn[child]
            p_tn[child] = len(tn_time)
            tn_time.append(t)
            tn_up.append(tn_up[n])
        if len(cand) > K:
            cand = nlargest(K, cand)
        else:
            cand.sort(reverse=True)
        if thr is not None:
            cut = cand[0][0] - thr
            if cand[-1][0] < cut:
                cand = [x for x in cand if x[0] >= cut]
        beam = [x[2] for x in cand]
        member = {x[1]: x[2] for x in cand}
        # a prefix with a child in the beam must always extend: that path adds to the child
        parents = {p_parent[x[1]] for x in cand}

    final = []
    for e in beam:
        a, b = e[0], e[1]
        p = e[3]
        if a < b:
            a, b = b, a
        tot = a if b == NEG else a + log1p(exp(b - a))
        score = tot + p_lm[p]
        if fusion is not None:
            score += fusion.finish(p_state[p], p_node[p])
        final.append((score, p))
    final.sort(key=lambda s: -s[0])
    out = []
    for score, p in final[:nbest]:
        toks_out, times = [], []
        n = p_tn[p]
        while p > 0:
            toks_out.append(p_last[p])
            times.append(tn_time[n])
            p, n = p_parent[p], tn_up[n]
        out.append((toks_out[::-1], times[::-1], score))
    return out


# --- process pool: workers inherit (fork) or receive once (spawn) the decoder's settings ---------
_WORKER: "BeamSearchDecoder | None" = None


def _init_worker(decoder: "BeamSearchDecoder") -> None:
    global _WORKER
    _WORKER = decoder
    torch.set_num_threads(1)


def _work(job: tuple[np.ndarray, list[list[int]]]) -> list[tuple[list[int], list[int], float]]:
    lp, cands = job
    assert _WORKER is not None
    return _WORKER._search_one(lp, cands)


class BeamSearchDecoder:
    """CPU CTC prefix beam search, optionally with a word n-gram LM (see the module docstring).

    Called as ``decoder(log_probs (B, T, V), lengths (B,)) -> list[Hypothesis]``. With
    ``num_workers > 0`` utterances are decoded by a pool of processes; results are the same as
    sequential decoding. ``close()`` (or use as a context manager) stops the pool.
    """

    name = "beam"

    def __init__(self, tokenizer: Tokenizer, lm: NgramLM | str | Path | None = None, beam_size: int = 10,
                 alpha: float = 0.5, beta: float = 1.0, unk_penalty: float = DEFAULT_UNK_PENALTY,
                 token_top_k: int | None = None, token_min_logp: float | None = -8.0,
                 beam_threshold: float | None = 30.0, lookahead: bool = True, num_workers: int = 0):
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.tokenizer = tokenizer
        self.opts = SearchOptions(beam_size, token_top_k, token_min_logp, beam_threshold)
        self.fusion: LMFusion | None = None
        if lm is not None:
            name = str(lm) if not isinstance(lm, NgramLM) else "LM"
            model = lm if isinstance(lm, NgramLM) else load_lm(str(lm))
            self.fusion = LMFusion(model, tokenizer, alpha, beta, unk_penalty, name=name, lookahead=lookahead)
        self.num_workers = num_workers
        self._pool = None

    @property
    def uses_greedy(self) -> bool:
        """A beam of one with no (or a zero-weight) LM is the greedy best path."""
        f = self.fusion
        return self.opts.beam_size == 1 and (f is None or (f.alpha == 0.0 and f.beta == 0.0))

    def _search_one(self, lp: np.ndarray | Tensor, cands=None, nbest: int = 1):
        return prefix_beam_search(lp, self.opts, self.fusion, cands, nbest)

    def nbest(self, log_probs: Tensor, n: int = 10, distinct: bool = True) -> list[Hypothesis]:
        """One utterance, log_probs (T, V) -> up to ``n`` hypotheses with different words, best first.

        Prefixes that differ only by a trailing word boundary ("A B" and "A B |") are the same
        transcript: only the better one is kept, so the gap between the first two compares words.
        ``distinct=False``: every labelling the search kept, as it is (their probabilities add up).
        """
        found = self._search_one(log_probs.detach().float().cpu().numpy(), nbest=2 * n if distinct else n)
        if not distinct:
            return [self._hyp(*r) for r in found]
        out: dict[str, Hypothesis] = {}
        for r in found:
            h = self._hyp(*r)
            out.setdefault(h.text, h)
        return list(out.values())[:n]

    def _hyp(self, tokens: list[int], times: list[int], score: float) -> Hypothesis:
        return Hypothesis(self.tokenizer.decode(tokens), tokens, times, score)

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[Hypothesis]:
        """log_probs (B, T, V), lengths (B,) -> one Hypothesis per utterance."""
        _check_batch(log_probs, lengths, len(self.tokenizer.tokens))
        if self.uses_greedy:
            return greedy_decode(log_probs, lengths, self.tokenizer)
        lp = log_probs.detach().float().cpu().numpy()
        lengths = lengths.cpu()
        cands = candidate_lists(lp, lengths, self.opts)
        jobs = [(lp[b, :int(lengths[b])], cands[b]) for b in range(lp.shape[0])]
        if self.num_workers > 0 and len(jobs) > 1:
            results = self._get_pool().map(_work, jobs, chunksize=max(1, len(jobs) // (4 * self.num_workers)))
        else:
            results = [self._search_one(j[0], j[1]) for j in jobs]
        return [self._hyp(*r[0]) if r else Hypothesis("", [], [], NEG) for r in results]

    def _get_pool(self):
        if self._pool is None:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            self._pool = mp.get_context(method).Pool(self.num_workers, initializer=_init_worker, initargs=(self,))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> "BeamSearchDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pool"] = None  # a pool cannot travel to its own workers
        return state

    def __del__(self) -> None:
        if getattr(self, "_pool", None) is not None and os.getpid() == getattr(self, "_owner_pid", os.getpid()):
            self.close()


def _check_batch(log_probs: Tensor, lengths: Tensor, vocab_size: int) -> None:
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, V); got shape {tuple(log_probs.shape)}")
    B, T, V = log_probs.shape
    if V != vocab_size:
        raise ValueError(f"log_probs have {V} classes but the tokenizer has {vocab_size} tokens")
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths must be 1-D with one entry per batch item; got shape {tuple(lengths.shape)} for batch {B}")
    if B and (int(lengths.max()) > T or int(lengths.min()) < 0):
        raise ValueError(f"lengths must lie in [0, {T}]; got {lengths.tolist()}")
