"""WER/CER and error reports, with jiwer underneath.

References and hypotheses pass through the same normaliser (``asr.text.normalize``) before
scoring, and WER is corpus-level: errors summed over the set, divided by reference words.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import jiwer

from asr.text import normalize


class ScoringError(ValueError):
    pass


@dataclass
class Score:
    wer: float
    cer: float
    num_utts: int
    num_words: int
    substitutions: int
    deletions: int
    insertions: int
    sub_pairs: Counter = field(default_factory=Counter)
    ins_words: Counter = field(default_factory=Counter)
    del_words: Counter = field(default_factory=Counter)
    per_utt: list[dict] = field(default_factory=list)


def match_ids(refs: dict[str, str], hyps: dict[str, str]) -> list[str]:
    """Ids present in both; any id in one and not the other is an error, not a silent drop."""
    missing = sorted(set(refs) - set(hyps))
    extra = sorted(set(hyps) - set(refs))
    if missing or extra:
        raise ScoringError(
            f"reference and hypothesis ids differ: {len(missing)} without hypothesis (e.g. {missing[:3]}), "
            f"{len(extra)} without reference (e.g. {extra[:3]})"
        )
    return sorted(refs)


def error_counts(words: jiwer.WordOutput) -> tuple[Counter, Counter, Counter]:
    """Word by word: (substitution (ref, hyp) pairs, inserted words, deleted words) over all alignments.

    ``jiwer.collect_error_counts`` joins a run of errors into one entry ("A B -> C D"); here each
    word of a run counts once.
    """
    subs: Counter = Counter()
    ins: Counter = Counter()
    dels: Counter = Counter()
    for ref, hyp, align in zip(words.references, words.hypotheses, words.alignments):
        for c in align:
            r, h = ref[c.ref_start_idx:c.ref_end_idx], hyp[c.hyp_start_idx:c.hyp_end_idx]
            if c.type == "substitute":
                # rapidfuzz's replace blocks are runs of one-to-one replacements: equal lengths
                subs.update(zip(r, h, strict=True))
            elif c.type == "delete":
                dels.update(r)
            elif c.type == "insert":
                ins.update(h)
    return subs, ins, dels


def score(refs: list[str], hyps: list[str], ids: list[str] | None = None) -> Score:
    """Corpus WER and CER of normalised ``hyps`` against ``refs`` (same order)."""
    if len(refs) != len(hyps):
        raise ScoringError(f"{len(refs)} references but {len(hyps)} hypotheses")
    ids = ids or [str(i) for i in range(len(refs))]
    refs = [normalize(r) for r in refs]
    hyps = [normalize(h) for h in hyps]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    num_words = sum(len(r.split()) for r in refs)
    errors = words.substitutions + words.deletions + words.insertions
    subs, ins, dels = error_counts(words)
    per_utt = []
    for uid, r, h, align in zip(ids, refs, hyps, words.alignments):
        counts: Counter = Counter()
        for chunk in align:
            span = chunk.hyp_end_idx - chunk.hyp_start_idx if chunk.type == "insert" else chunk.ref_end_idx - chunk.ref_start_idx
            counts[chunk.type] += span
        per_utt.append({"id": uid, "ref": r, "hyp": h, "words": len(r.split()),
                        "sub": counts["substitute"], "del": counts["delete"], "ins": counts["insert"]})
    n_chars = sum(len(r) for r in refs)
    char_err = chars.substitutions + chars.deletions + chars.insertions
    return Score(
        wer=errors / max(num_words, 1),
        cer=char_err / max(n_chars, 1),
        num_utts=len(refs),
        num_words=num_words,
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
        sub_pairs=subs,
        ins_words=ins,
        del_words=dels,
        per_utt=per_utt,
    )


def wer(refs: list[str], hyps: list[str]) -> float:
    return score(refs, hyps).wer


def format_errs(s: Score, top: int = 20) -> str:
    """sclite-like text report: summary, top confusions, then per-utterance alignment."""
    lines = [
        f"%WER {100 * s.wer:.2f} [ {s.substitutions + s.deletions + s.insertions} / {s.num_words}, "
        f"{s.insertions} ins, {s.deletions} del, {s.substitutions} sub ]",
        f"%CER {100 * s.cer:.2f}",
        "",
        "SUBSTITUTIONS: count ref -> hyp",
    ]
    lines += [f"  {n:5d}  {r} -> {h}" for (r, h), n in s.sub_pairs.most_common(top)]
    lines += ["", "DELETIONS: count ref"] + [f"  {n:5d}  {w}" for w, n in s.del_words.most_common(top)]
    lines += ["", "INSERTIONS: count hyp"] + [f"  {n:5d}  {w}" for w, n in s.ins_words.most_common(top)]
    lines += ["", "PER UTTERANCE: id (sub del ins / words)"]
    for u in s.per_utt:
        lines += [f"{u['id']}  ({u['sub']} {u['del']} {u['ins']} / {u['words']})", f"  REF: {u['ref']}", f"  HYP: {u['hyp']}"]
    return "\n".join(lines) + "\n"
