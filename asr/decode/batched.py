"""Batched CTC prefix beam search in torch tensor operations, with word n-gram LM fusion.

The search is the one in ``asr.decode.beam`` (same candidates, scores, merging and pruning), run for
a whole batch at once on (B, K) beams and (B, K, C) extensions, C being the candidate tokens of a
frame. There is a Python loop over frames and none over hypotheses, so it runs on the GPU for
large test sets and on the CPU (in float64 by default there, where it matches the CPU decoder up
to ties).

How the LM becomes tensors (``TensorLM``): every n-gram gets an index in its order's table; an
n-gram of order n > 1 is keyed by ``index(its first n-1 words) * W + last word`` (W = vocabulary
size), keys sorted, so finding an n-gram is one ``torch.searchsorted`` per word. A beam's LM state
is its last N-1 word ids; p(w | h) follows the backoff chain from the longest history, a handful of
searchsorted calls for all word ends of a frame together. Spelling (``TensorLexicon``): the
vocabulary trie's transitions ``(node, token) -> node`` are listed once, keyed ``node * V + token``
and sorted, so following every partial word one token further is also a searchsorted.

Prefixes are told apart by a rolling hash (with their last token and length as a further check): a
child that equals a prefix already in the beam adds its probability there, as in the CPU search.
Each frame's back-pointers are kept to read out tokens and timesteps at the end.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from asr.decode.beam import (CONT, DEFAULT_UNK_PENALTY, OOV, ROOT, SPACE, START, LMFusion, SearchOptions, _check_batch,
                              candidate_mask, load_lm)
from asr.decode.greedy import greedy_decode
from asr.decode.types import Hypothesis
from asr.lm.arpa import LOG10, UNK_LOG10, NgramLM
from asr.text import BLANK, Tokenizer

NEG = float("-inf")
_HASH_P = 1_000_003
_HASH_M = (1 << 40) - 87  # keeps hash * P inside int64


def _lookup(keys: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of ``query`` in sorted ``keys`` and whether each was found."""
    if keys.numel() == 0:
        return torch.zeros_like(query), torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    return pos, keys[pos] == query


class TensorLM:
    """An ``NgramLM`` as sorted tensors on ``device``; scores in natural log like ``NgramLM.score``."""

    def __init__(self, lm: NgramLM, device: torch.device, dtype: torch.dtype):
        self.order = lm.order
        self.W = W = len(lm.vocab)
        self.unk_id, self.bos_id, self.eos_id = lm.unk_id, lm.bos_id, lm.eos_id
        self.unk_log10 = lm.unk_log10
        uni_lp = torch.full((W,), UNK_LOG10, dtype=torch.float64)
        uni_bow = torch.zeros(W, dtype=torch.float64)
        for (w,), p in lm.probs[0].items():
            uni_lp[w] = p
        for (w,), b in lm.backoffs[0].items():
            uni_bow[w] = b
        self.keys: list[Tensor] = [torch.arange(W, dtype=torch.long)]
        self.lp: list[Tensor] = [uni_lp]
        self.bow: list[Tensor] = [uni_bow]
        index: dict[tuple[int, ...], int] = {(w,): w for w in range(W)}
        for n in range(2, lm.order + 1):
            rows = []
            for g, p in lm.probs[n - 1].items():
                ctx = index.get(g[:-1])
                if ctx is not None:  # an n-gram whose history is not in the model is unreachable
                    rows.append((ctx * W + g[-1], p, lm.backoffs[n - 1].get(g, 0.0), g))
            rows.sort()
            index = {r[3]: i for i, r in enumerate(rows)}
            self.keys.append(torch.tensor([r[0] for r in rows], dtype=torch.long))
            self.lp.append(torch.tensor([r[1] for r in rows], dtype=torch.float64))
            self.bow.append(torch.tensor([r[2] for r in rows], dtype=torch.float64))
        self.keys = [k.to(device) for k in self.keys]
        self.lp = [x.to(device, dtype) for x in self.lp]
        self.bow = [x.to(device, dtype) for x in self.bow]
        self.device, self.dtype = device, dtype

    def begin(self, shape: tuple[int, ...]) -> Tensor:
        """Histories (..., N-1) holding only <s> (or nothing); -1 marks an empty slot."""
        ctx = torch.full((*shape, max(self.order - 1, 0)), -1, dtype=torch.long, device=self.device)
        if self.order > 1 and self.bos_id >= 0:
            ctx[..., -1] = self.bos_id
        return ctx

    def _index(self, words: Tensor) -> Tensor:
        """(M, L) word ids -> index of that L-gram in its table, -1 when absent."""
        idx = words[:, 0].clone()
        for j in range(1, words.shape[1]):
            w = words[:, j]
            pos, found = _lookup(self.keys[j], idx.clamp(min=0) * self.W + w.clamp(min=0))
            idx = torch.where(found & (idx >= 0) & (w >= 0), pos, torch.full_like(idx, -1))
        return idx

    def score(self, ctx: Tensor, word: Tensor) -> tuple[Tensor, Tensor]:
        """ctx (M, N-1), word (M,) (-1: out of vocabulary) -> (natural-log p (M,), next ctx (M, N-1))."""
        M = word.shape[0]
        oov = word < 0
        if self.unk_id >= 0:
            word = torch.where(oov, torch.full_like(word, self.unk_id), word)
        w = word.clamp(min=0)
        acc = torch.zeros(M, dtype=self.dtype, device=self.device)
        res = torch.zeros(M, dtype=self.dtype, device=self.device)
        done = torch.zeros(M, dtype=torch.bool, device=self.device)
        H = self.order - 1
        for start in range(H + 1):
            L = H - start
            if L == 0:
                res = torch.where(done, res, acc + self.lp[0][w])
                break
            hist = ctx[:, start:]
            hid = self._index(hist)
            pos, found = _lookup(self.keys[L], hid.clamp(min=0) * self.W + w)
            found &= (hid >= 0) & ~done
            res = torch.where(found, acc + self.lp[L][pos], res)
            done |= found
            acc = acc + torch.where(~done & (hid >= 0), self.bow[L - 1][hid.clamp(min=0)], torch.zeros_like(acc))
        if self.unk_id < 0:
            res = torch.where(oov, torch.full_like(res, UNK_LOG10), res)
        if H:
            nxt = torch.cat([ctx[:, 1:], word[:, None]], dim=1)
            if self.unk_id < 0:  # an unknown word without <unk> resets the history, as NgramLM does
                nxt = torch.where(oov[:, None], torch.full_like(nxt, -1), nxt)
        else:
            nxt = ctx
        return res * LOG10, nxt


class TensorLexicon:
    """The vocabulary trie of an ``LMFusion`` as sorted tensors: token transitions and word ends."""

    def __init__(self, fusion: LMFusion, device: torch.device, dtype: torch.dtype):
        V = fusion.V
        token_trie: list[dict[str, int]] = [{}]
        token_end: list[list[int]] = [[]]
        for tok in range(V):
            chars = fusion.chars[tok]
            if tok == BLANK or not chars:
                continue
            node = 0
            for ch in chars:
                nxt = token_trie[node].get(ch)
                if nxt is None:
                    nxt = len(token_trie)
                    token_trie[node][ch] = nxt
                    token_trie.append({})
                    token_end.append([])
                node = nxt
            token_end[node].append(tok)
        # walk the word trie and the token trie together: every (node, token) that stays in the vocabulary
        keys, vals = [], []
        for start in range(len(fusion.children)):
            stack = [(0, start)]
            while stack:
                tnode, wnode = stack.pop()
                for tok in token_end[tnode]:
                    keys.append(start * V + tok)
                    vals.append(wnode)
                for ch, tnext in token_trie[tnode].items():
                    wnext = fusion.children[wnode].get(ch)
                    if wnext is not None:
                        stack.append((tnext, wnext))
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self.V = V
        self.keys = torch.tensor([keys[i] for i in order], dtype=torch.long, device=device)
        self.vals = torch.tensor([vals[i] for i in order], dtype=torch.long, device=device)
        self.node_word = torch.tensor(fusion.node_word, dtype=torch.long, device=device)
        self.kinds = torch.tensor(fusion.kinds, dtype=torch.long, device=device)
        # look-ahead scores per trie node, and of a partial word outside the trie (see LMFusion)
        self.la = torch.tensor(fusion.la, dtype=dtype, device=device)
        self.la_oov = torch.tensor(fusion.la_oov, dtype=dtype, device=device)
        # tokens with no characters (the blank, a bare space) leave the node where it is
        self.empty = torch.tensor([not c for c in fusion.chars], dtype=torch.bool, device=device)

    def lookahead(self, node: Tensor) -> Tensor:
        """The look-ahead score a partial word at ``node`` carries (OOV: that of ``<unk>``)."""
        return torch.where(node == OOV, self.la_oov, self.la[node.clamp(min=0)])

    def step(self, node: Tensor, token: Tensor) -> Tensor:
        """Trie node after ``token``; OOV once a partial word leaves the vocabulary (or already had)."""
        pos, found = _lookup(self.keys, node.clamp(min=0) * self.V + token)
        nxt = torch.where(found, self.vals[pos], torch.full_like(node, OOV))
        nxt = torch.where(self.empty[token], node, nxt)
        return torch.where(node == OOV, node, nxt)


class BatchedBeamSearchDecoder:
    """CTC prefix beam search over a batch in tensor ops; same options and results as
    ``BeamSearchDecoder`` (up to ties). ``device`` is where the search runs; ``dtype`` defaults to
    float64 on the CPU and float32 on CUDA."""

    name = "beam-gpu"

    def __init__(self, tokenizer: Tokenizer, lm: NgramLM | str | Path | None = None, beam_size: int = 10,
                 alpha: float = 0.5, beta: float = 1.0, unk_penalty: float = DEFAULT_UNK_PENALTY,
                 token_top_k: int | None = None, token_min_logp: float | None = -8.0,
                 beam_threshold: float | None = 30.0, lookahead: bool = True, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None):
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.tokenizer = tokenizer
        self.opts = SearchOptions(beam_size, token_top_k, token_min_logp, beam_threshold)
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float64 if self.device.type == "cpu" else torch.float32)
        self._neg = torch.tensor(NEG, dtype=self.dtype, device=self.device)
        self.fusion: LMFusion | None = None
        self.tlm: TensorLM | None = None
        self.lex: TensorLexicon | None = None
        if lm is not None:
            name = str(lm) if not isinstance(lm, NgramLM) else "LM"
            model = lm if isinstance(lm, NgramLM) else load_lm(str(lm))
            self.fusion = LMFusion(model, tokenizer, alpha, beta, unk_penalty, name=name, lookahead=lookahead)
            self.tlm = TensorLM(model, self.device, self.dtype)
            self.lex = TensorLexicon(self.fusion, self.device, self.dtype)
            self._oov = torch.tensor(self.fusion.oov_cost, dtype=self.dtype, device=self.device)
            self._zero = torch.tensor(0.0, dtype=self.dtype, device=self.device)

    @property
    def uses_greedy(self) -> bool:
        f = self.fusion
        return self.opts.beam_size == 1 and (f is None or (f.alpha == 0.0 and f.beta == 0.0))

    @torch.inference_mode()
    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[Hypothesis]:
        """log_probs (B, T, V), lengths (B,) -> one Hypothesis per utterance."""
        _check_batch(log_probs, lengths, len(self.tokenizer.tokens))
        if self.uses_greedy:
            return greedy_decode(log_probs, lengths, self.tokenizer)
        results = self.search(log_probs, lengths)
        return [Hypothesis(self.tokenizer.decode(toks), toks, times, score) for toks, times, score in results]

    def _close_word(self, ctx: Tensor, node: Tensor) -> tuple[Tensor, Tensor]:
        """Score the words ending at trie ``node`` (M,) after histories ``ctx`` (M, N-1): (added score, next ctx).
        Rows whose node is ROOT (no partial word) add nothing and keep their history."""
        f, lex, tlm = self.fusion, self.lex, self.tlm
        assert f is not None and lex is not None and tlm is not None
        add = torch.zeros(node.shape, dtype=self.dtype, device=self.device)
        open_ = node != ROOT
        if not bool(open_.any()):
            return add, ctx
        idx = open_.nonzero().squeeze(1)
        nd = node[idx]
        word = torch.where(nd == OOV, torch.full_like(nd, -1), lex.node_word[nd.clamp(min=0)])
        pen = torch.where((nd != OOV) & (word < 0), self._oov, self._zero) - lex.lookahead(nd)
        lp, nxt = tlm.score(ctx[idx], word)
        add[idx] = pen + f.alpha * lp.clamp(max=0.0) + f.beta
        ctx = ctx.clone()
        ctx[idx] = nxt
        return add, ctx

    def search(self, log_probs: Tensor, lengths: Tensor) -> list[tuple[list[int], list[int], float]]:
        """The best (tokens, timesteps, score) of each utterance of log_probs (B, T, V)."""
        dev, dt = self.device, self.dtype
        lp_all = log_probs.detach().to(dev, dt)
        lengths = lengths.to(dev)
        B, T, V = lp_all.shape
        K = self.opts.beam_size
        thr = self.opts.beam_threshold
        f = self.fusion
        with_lm = f is not None

        mask = candidate_mask(lp_all, self.opts)  # (B, T, V-1)
        mask &= (torch.arange(T, device=dev)[None, :] < lengths[:, None])[..., None]
        count = mask.sum(-1)  # (B, T)
        width = count.amax(0).tolist() if B else [0] * T  # candidates a frame needs at most
        C_max = max(width, default=0)
        if C_max:
            cand_lp, cand_idx = torch.where(mask, lp_all[..., 1:], torch.full_like(lp_all[..., 1:], NEG)).topk(C_max, dim=-1)
            cand_tok = cand_idx + 1  # (B, T, C_max), best first
            cand_ok = torch.arange(C_max, device=dev) < count[..., None]

        neg = torch.full((B, K), NEG, dtype=dt, device=dev)
        pb = neg.clone()
        pb[:, 0] = 0.0
        pnb = neg.clone()
        lm = torch.zeros(B, K, dtype=dt, device=dev)
        last = torch.zeros(B, K, dtype=torch.long, device=dev)
        slots = torch.arange(K, device=dev).expand(B, K)
        hsh = torch.where(slots == 0, torch.zeros_like(slots), -1 - slots)  # -1-k: no prefix
        phash = torch.full((B, K), -(K + 2), dtype=torch.long, device=dev)  # the parent's hash
        length = torch.zeros(B, K, dtype=torch.long, device=dev)
        born = torch.full((B, K), -1, dtype=torch.long, device=dev)
        emit = torch.zeros(B, K, dtype=dt, device=dev)
        if with_lm:
            ctx = self.tlm.begin((B, K))
            node = torch.full((B, K), ROOT, dtype=torch.long, device=dev)
        hist_parent, hist_token, hist_born = [], [], []
        bidx = torch.arange(B, device=dev)[:, None]
        no_token = torch.full((B, K), -1, dtype=torch.long, device=dev)

        for t in range(T):
            row = lp_all[:, t]  # (B, V)
            active = (t < lengths)[:, None]
            # stays: blank, or the last token repeated
            tot = torch.logaddexp(pb, pnb)
            s_b = tot + row[:, :1]
            s_nb = torch.where(last != BLANK, pnb + row.gather(1, last), neg)
            C = width[t]
            if C == 0:
                # no utterance has a candidate token: every prefix only stays (as in the CPU search)
                pb = torch.where(active, s_b, pb)
                pnb = torch.where(active, s_nb, pnb)
                hist_parent.append(slots)
                hist_token.append(no_token)
                hist_born.append(born)
                continue
            tok = cand_tok[:, t, :C][:, None, :].expand(B, K, C)  # (B, K, C)
            ok = cand_ok[:, t, :C][:, None, :] & (tot > NEG)[..., None]
            v = torch.where(tok == last[..., None], pb[..., None], tot[..., None]) + cand_lp[:, t, :C][:, None, :]
            v = torch.where(ok, v, torch.full_like(v, NEG))
            # A child equals a prefix j already in the beam when j's parent is in the beam and j's last
            # token is a candidate: then it adds its paths to j instead of becoming a beam of its own.
            par = (phash[:, :, None] == hsh[:, None, :]) & (length[:, :, None] == length[:, None, :] + 1)  # (B, Kj, Kk)
            pos = (cand_tok[:, t, :C][:, None, :] == last[:, :, None]) & cand_ok[:, t, :C][:, None, :]  # (B, Kj, C)
            matched = par.any(-1) & pos.any(-1) & (hsh >= 0)
            pk, pc = par.int().argmax(-1), pos.int().argmax(-1)
            flat_i = pk * C + pc
            contrib = torch.where(matched, v.flatten(1).gather(1, flat_i), neg)
            s_nb = torch.logaddexp(s_nb, contrib)
            newer = contrib > emit
            emit = torch.where(newer, contrib, emit)
            born = torch.where(newer, torch.full_like(born, t), born)
            mb, mj = matched.nonzero(as_tuple=True)
            v = v.flatten(1).index_put((mb, flat_i[mb, mj]), self._neg).view(B, K, C)
            c_hash = (hsh[..., None].clamp(min=0) * _HASH_P + tok + 1) % _HASH_M
            # the children's LM score: trie steps inside words, n-gram scores where a word ends
            if with_lm:
                kind = self.lex.kinds[tok]
                live = v > NEG
                add = torch.zeros_like(v)
                p_node = node[..., None].expand(B, K, C)
                inside = live & (kind == CONT) & (p_node != OOV)
                if bool(inside.any()):
                    # inside a word: the look-ahead moves, and leaving the trie costs the OOV penalty
                    ii = inside.nonzero(as_tuple=True)
                    nd_i = p_node[ii]
                    nxt = self.lex.step(nd_i, tok[ii])
                    step_add = self.lex.lookahead(nxt) - self.lex.lookahead(nd_i)
                    add = add.index_put(ii, torch.where(nxt == OOV, self._oov + step_add, step_add))
                bound = live & (kind != CONT)
                if bool(bound.any()):
                    bi = bound.nonzero(as_tuple=True)
                    w_add, _ = self._close_word(ctx[bi[0], bi[1]], p_node[bi])
                    # a word-start piece opens the next word: its look-ahead (or the OOV penalty)
                    start_nxt = self.lex.step(torch.full_like(tok[bi], ROOT), tok[bi])
                    opened = self.lex.lookahead(start_nxt) + torch.where(start_nxt == OOV, self._oov, self._zero)
                    w_add = w_add + torch.where(kind[bi] == START, opened, self._zero)
                    add = add.index_put(bi, w_add)
                c_score = v + (lm[..., None] + add)
            else:
                c_score = v + lm[..., None]
            st_score = torch.logaddexp(s_b, s_nb) + lm
            pool = torch.cat([st_score, c_score.flatten(1)], dim=1)  # (B, K + K*C)
            top, sel = pool.topk(K, dim=1)
            if thr is not None:
                # as in the CPU search, the threshold applies where the beam is re-selected
                has = (count[:, t] > 0)[:, None]
                top = torch.where(has & (top < top[:, :1] - thr), torch.full_like(top, NEG), top)
            dead = top == NEG
            is_child = sel >= K
            ci = (sel - K).clamp(min=0)
            parent = torch.where(is_child, ci // C, sel)
            ctok = tok.flatten(1).gather(1, ci)
            cv = v.flatten(1).gather(1, ci)

            def g(x: Tensor) -> Tensor:  # the parent's value of a (B, K) state
                return x.gather(1, parent)

            n_pb = torch.where(is_child | dead, neg, g(s_b))
            n_pnb = torch.where(dead, neg, torch.where(is_child, cv, g(s_nb)))
            n_last = torch.where(is_child, ctok, g(last))
            n_hash = torch.where(dead, -1 - slots, torch.where(is_child, c_hash.flatten(1).gather(1, ci), g(hsh)))
            n_phash = torch.where(is_child, g(hsh), g(phash))
            n_len = g(length) + is_child.long()
            n_born = torch.where(is_child, torch.full_like(born, t), g(born))
            n_emit = torch.where(is_child, cv, g(emit))
            if with_lm:
                n_lm = g(lm) + torch.where(is_child, add.flatten(1).gather(1, ci), self._zero)
                p_ctx = ctx[bidx, parent]
                p_nd = g(node)
                kind_c = self.lex.kinds[ctok]
                n_node = torch.where(kind_c == SPACE, torch.full_like(p_nd, ROOT),
                                     self.lex.step(torch.where(kind_c == START, torch.full_like(p_nd, ROOT), p_nd), ctok))
                n_node = torch.where(is_child, n_node, p_nd)
                closes = is_child & (kind_c != CONT) & ~dead
                if bool(closes.any()):
                    c2 = closes.nonzero(as_tuple=True)
                    _, c_ctx = self._close_word(p_ctx[c2], p_nd[c2])
                    p_ctx = p_ctx.index_put(c2, c_ctx)
                ctx = torch.where(active[..., None], p_ctx, ctx)
                node = torch.where(active, n_node, node)
            else:
                n_lm = g(lm)
            # utterances that have ended keep their beam as it is
            pb, pnb = torch.where(active, n_pb, pb), torch.where(active, n_pnb, pnb)
            lm, last = torch.where(active, n_lm, lm), torch.where(active, n_last, last)
            hsh, phash = torch.where(active, n_hash, hsh), torch.where(active, n_phash, phash)
            length, born, emit = torch.where(active, n_len, length), torch.where(active, n_born, born), torch.where(active, n_emit, emit)
            hist_parent.append(torch.where(active, parent, slots))
            hist_token.append(torch.where(active & is_child & ~dead, ctok, no_token))
            hist_born.append(born)

        # end of utterance: the last word and </s>
        final = torch.logaddexp(pb, pnb) + lm
        if with_lm:
            flat_ctx, flat_node = ctx.reshape(B * K, -1), node.reshape(B * K)
            w_add, e_ctx = self._close_word(flat_ctx, flat_node)
            eos = torch.full((B * K,), self.tlm.eos_id, dtype=torch.long, device=dev)
            if self.tlm.eos_id >= 0:
                e_lp, _ = self.tlm.score(e_ctx, eos)
            else:
                e_lp = torch.zeros(B * K, dtype=dt, device=dev)
            final = final + (w_add + f.alpha * e_lp).reshape(B, K)
        best = final.argmax(1)
        scores = final.gather(1, best[:, None]).squeeze(1).tolist()
        if not hist_parent:
            return [([], [], s) for s in scores]
        parents = torch.stack(hist_parent).cpu().tolist()  # (T, B, K)
        tokens = torch.stack(hist_token).cpu().tolist()
        borns = torch.stack(hist_born).cpu().tolist()
        out = []
        for b in range(B):
            k = int(best[b])
            toks, times = [], []
            seg_born = borns[T - 1][b][k]
            for t in range(T - 1, -1, -1):
                tk = tokens[t][b][k]
                nk = parents[t][b][k]
                if tk >= 0:
                    toks.append(tk)
                    times.append(seg_born)
                    if t > 0:
                        seg_born = borns[t - 1][b][nk]
                k = nk
            out.append((toks[::-1], times[::-1], scores[b]))
        return out
