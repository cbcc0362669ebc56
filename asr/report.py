"""Evaluation report from an ``asr.metrics.Score``: Markdown plus PNG plots, written beside results.json.

``report.md`` holds the overall WER/CER, WER by speaker and by utterance length, the most frequent
substitutions, deletions and insertions, and an sclite-style alignment of every utterance (worst
first); ``wer_by_length.png``, ``wer_by_speaker.png`` and ``confusions.png`` draw the same tables.
Plots use matplotlib's object API on the Agg canvas, so no display and no global backend are touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import jiwer

from asr.metrics import Score, score

DURATION_EDGES = (2.0, 5.0, 10.0, 20.0)  # seconds
WORD_EDGES = (5, 10, 20, 40)  # reference words, when durations are unknown


@dataclass
class GroupScore:
    """Errors of a group of utterances (a speaker, a length bucket); WER is errors / reference words."""

    name: str
    utts: int
    words: int
    sub: int
    dele: int
    ins: int
    cer: float | None = None

    @property
    def errors(self) -> int:
        return self.sub + self.dele + self.ins

    @property
    def wer(self) -> float:
        return self.errors / max(self.words, 1)


def _cer(refs: list[str], hyps: list[str]) -> float | None:
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    if not pairs:
        return None
    out = jiwer.process_characters([r for r, _ in pairs], [h for _, h in pairs])
    return (out.substitutions + out.deletions + out.insertions) / max(sum(len(r) for r, _ in pairs), 1)


def group_scores(s: Score, group_of: dict[str, str], order: Iterable[str] | None = None) -> list[GroupScore]:
    """Sum per-utterance errors over groups; ``group_of`` maps utterance id -> group name.

    Groups come in ``order`` if given (names not present are left out), else by WER, worst first.
    """
    members: dict[str, list[dict]] = {}
    for u in s.per_utt:
        members.setdefault(group_of.get(u["id"], "?"), []).append(u)
    groups = [GroupScore(name, len(us), sum(u["words"] for u in us), sum(u["sub"] for u in us),
                         sum(u["del"] for u in us), sum(u["ins"] for u in us),
                         _cer([u["ref"] for u in us], [u["hyp"] for u in us]))
              for name, us in members.items()]
    if order is not None:
        rank = {name: i for i, name in enumerate(order)}
        return sorted((g for g in groups if g.name in rank), key=lambda g: rank[g.name])
    return sorted(groups, key=lambda g: (-g.wer, g.name))


def speaker_scores(s: Score, speakers: dict[str, str | None]) -> list[GroupScore]:
    """WER and CER per speaker (utterances without a speaker label form the group ``"?"``), worst first."""
    return group_scores(s, {uid: spk if spk is not None else "?" for uid, spk in speakers.items()})


def _bucket_names(edges: tuple[float, ...], unit: str) -> list[str]:
    fmt = (lambda x: f"{x:g}")
    names = [f"< {fmt(edges[0])} {unit}"]
    names += [f"{fmt(a)}-{fmt(b)} {unit}" for a, b in zip(edges, edges[1:])]
    return names + [f">= {fmt(edges[-1])} {unit}"]


def length_scores(s: Score, durations: dict[str, float] | None = None) -> tuple[list[GroupScore], str]:
    """WER by utterance-length bucket: by duration in seconds when ``durations`` (id -> s) covers every
    utterance, else by reference words. Returns the buckets (short to long) and the unit's name."""
    if durations and all(u["id"] in durations for u in s.per_utt):
        edges, unit, length = DURATION_EDGES, "s", {u["id"]: durations[u["id"]] for u in s.per_utt}
    else:
        edges, unit, length = WORD_EDGES, "words", {u["id"]: float(u["words"]) for u in s.per_utt}
    names = _bucket_names(edges, unit)
    bucket = {uid: names[sum(x >= e for e in edges)] for uid, x in length.items()}
    return group_scores(s, bucket, order=names), ("duration" if unit == "s" else "reference words")


def align_lines(ref: str, hyp: str) -> tuple[str, str, str]:
    """sclite-style alignment of normalised ``ref`` and ``hyp``: (REF line, HYP line, marks line).

    Correct words in lower case, errors in upper case, ``***`` fills the side that has no word, and
    the marks line puts S, D or I under each error.
    """
    cols: list[tuple[str, str, str]] = []
    r, h = ref.split(), hyp.split()
    if not r or not h:
        cols = [(w, "*" * len(w), "D") for w in r] + [("*" * len(w), w, "I") for w in h]
    else:
        for c in jiwer.process_words(ref, hyp).alignments[0]:
            rs, hs = r[c.ref_start_idx:c.ref_end_idx], h[c.hyp_start_idx:c.hyp_end_idx]
            if c.type == "equal":
                cols += [(a.lower(), b.lower(), "") for a, b in zip(rs, hs)]
            elif c.type == "substitute":
                cols += [(a, b, "S") for a, b in zip(rs, hs)]
            elif c.type == "delete":
                cols += [(a, "*" * len(a), "D") for a in rs]
            else:
                cols += [("*" * len(b), b, "I") for b in hs]
    widths = [max(len(a), len(b), len(m)) for a, b, m in cols]
    line = lambda k: " ".join(col[k].ljust(w) for col, w in zip(cols, widths)).rstrip()  # noqa: E731
    return line(0), line(1), line(2)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _group_table(groups: list[GroupScore], first: str) -> list[str]:
    lines = [f"| {first} | utts | words | WER | CER | sub | del | ins |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {_md_escape(g.name)} | {g.utts} | {g.words} | {_pct(g.wer)} | {_pct(g.cer)} | {g.sub} | {g.dele} "
              f"| {g.ins} |" for g in groups]
    return lines


def render_markdown(s: Score, speakers: list[GroupScore], lengths: list[GroupScore], length_unit: str,
                    title: str = "", top: int = 20, plots: dict[str, str] | None = None) -> str:
    """The report as Markdown; ``plots`` maps a plot's name to its file name, linked where it belongs."""
    plots = plots or {}
    errors = s.substitutions + s.deletions + s.insertions
    out = [f"# Evaluation report{': ' + _md_escape(title) if title else ''}", "",
           "| metric | value |", "|---|---:|",
           f"| WER | {_pct(s.wer)} ({errors} errors / {s.num_words} words) |",
           f"| substitutions / deletions / insertions | {s.substitutions} / {s.deletions} / {s.insertions} |",
           f"| CER | {_pct(s.cer)} |", f"| utterances | {s.num_utts} |", "",
           "References and hypotheses are compared after `asr.text.normalize` (upper case, letters, "
           "apostrophes, single spaces). WER is corpus-level: errors summed over the set / reference words.", ""]
    out += ["## WER by speaker", ""]
    if len(speakers) == 1 and speakers[0].name == "?":
        out += ["The manifest has no speaker labels.", ""]
    else:
        out += _group_table(speakers, "speaker") + [""]
        if "speaker" in plots:
            out += [f"![WER by speaker]({plots['speaker']})", ""]
    out += [f"## WER by utterance length ({length_unit})", ""] + _group_table(lengths, "length") + [""]
    if "length" in plots:
        out += [f"![WER by utterance length]({plots['length']})", ""]
    out += ["## Most frequent errors", "", f"### Substitutions (top {top})", "", "| count | reference | hypothesis |",
            "|---:|---|---|"]
    out += [f"| {n} | {_md_escape(r)} | {_md_escape(h)} |" for (r, h), n in s.sub_pairs.most_common(top)]
    for name, counter, col in (("Deletions", s.del_words, "reference word"),
                               ("Insertions", s.ins_words, "hypothesis word")):
        out += ["", f"### {name} (top {top})", "", f"| count | {col} |", "|---:|---|"]
        out += [f"| {n} | {_md_escape(w)} |" for w, n in counter.most_common(top)]
    out += [""]
    if "confusions" in plots:
        out += [f"![Most frequent errors]({plots['confusions']})", ""]
    out += ["## Per-utterance alignment", "",
            "Worst first (most errors, then id). Correct words in lower case, errors in upper case; "
            "asterisks (`***`) stand for a missing word; S, D, I mark substitutions, deletions and insertions.",
            "", "```"]
    for u in sorted(s.per_utt, key=lambda u: (-(u["sub"] + u["del"] + u["ins"]), u["id"])):
        ref, hyp, marks = align_lines(u["ref"], u["hyp"])
        errs = u["sub"] + u["del"] + u["ins"]
        out += [f"{u['id']}  ({errs} errors / {u['words']} words: {u['sub']} sub, {u['del']} del, {u['ins']} ins)",
                f"  REF: {ref}", f"  HYP: {hyp}"] + ([f"       {marks}"] if marks.strip() else []) + [""]
    out += ["```", ""]
    return "\n".join(out)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def plot_groups(groups: list[GroupScore], path: str | Path, title: str, xlabel: str, horizontal: bool = False) -> Path:
    """Bar chart of WER (%) per group, each bar labelled with its WER and utterance count."""
    fig = _figure(8, max(3.5, 0.32 * len(groups) + 1.5) if horizontal else 4.5)
    ax = fig.add_subplot()
    names = [g.name for g in groups]
    wers = [100 * g.wer for g in groups]
    if horizontal:
        bars = ax.barh(range(len(groups)), wers, color="#4c72b0")
        ax.set_yticks(range(len(groups)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("WER (%)")
        ax.set_ylabel(xlabel)
        ax.set_xlim(0, max(wers + [1]) * 1.25)
    else:
        bars = ax.bar(range(len(groups)), wers, color="#4c72b0")
        ax.set_xticks(range(len(groups)), names)
        ax.set_ylabel("WER (%)")
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, max(wers + [1]) * 1.2)
    labels = [f"{w:.1f}% ({g.utts} utts)" for w, g in zip(wers, groups)]
    ax.bar_label(bars, labels, padding=2, fontsize=8)
    ax.set_title(title)
    ax.grid(axis="x" if horizontal else "y", alpha=0.3)
    fig.savefig(path)
    return Path(path)


def plot_confusions(s: Score, path: str | Path, top: int = 15) -> Path:
    """Three horizontal bar charts: the most frequent substitutions (REF -> HYP), deletions, insertions."""
    subs = [(f"{r} -> {h}", n) for (r, h), n in s.sub_pairs.most_common(top)]
    panels = [("Substitutions (reference -> hypothesis)", subs),
              ("Deletions (reference word)", s.del_words.most_common(top)),
              ("Insertions (hypothesis word)", s.ins_words.most_common(top))]
    fig = _figure(13, max(4.0, 0.3 * top + 1.5))
    axes = fig.subplots(1, 3)
    for ax, (title, items), color in zip(axes, panels, ("#c44e52", "#8172b2", "#55a868")):
        ax.set_title(title, fontsize=10)
        if not items:
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        labels, counts = zip(*items)
        bars = ax.barh(range(len(items)), counts, color=color)
        ax.set_yticks(range(len(items)), labels, fontsize=8)
        ax.set_ylim(max(top, len(items)) - 0.5, -0.5)  # fixed slots: bars keep one height, most frequent on top
        ax.bar_label(bars, padding=2, fontsize=8)
        ax.set_xlim(0, max(counts) * 1.2)
        ax.set_xlabel("count")
    fig.suptitle(f"Most frequent errors ({s.substitutions} sub, {s.deletions} del, {s.insertions} ins)")
    fig.savefig(path)
    return Path(path)


def write_report(out_dir: str | Path, s: Score, speakers: dict[str, str | None] | None = None,
                 durations: dict[str, float] | None = None, title: str = "", top: int = 20,
                 plots: bool = True) -> Path:
    """Write ``report.md`` (and the PNG plots unless ``plots=False``) to ``out_dir``; returns the Markdown's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spk = speaker_scores(s, speakers or {})
    lengths, unit = length_scores(s, durations)
    files: dict[str, str] = {}
    if plots:
        plot_groups(lengths, out / "wer_by_length.png", "WER by utterance length", unit)
        files["length"] = "wer_by_length.png"
        if not (len(spk) == 1 and spk[0].name == "?"):
            shown = spk[:40]
            plot_groups(shown, out / "wer_by_speaker.png",
                        "WER by speaker" + (f" (worst {len(shown)} of {len(spk)})" if len(spk) > len(shown) else ""),
                        "speaker", horizontal=True)
            files["speaker"] = "wer_by_speaker.png"
        plot_confusions(s, out / "confusions.png", top=min(top, 15))
        files["confusions"] = "confusions.png"
    path = out / "report.md"
    path.write_text(render_markdown(s, spk, lengths, unit, title, top, files), encoding="utf-8")
    return path


def write_evaluation_report(out_dir: str | Path, utts: list, hyps: dict[str, str], title: str = "") -> Path:
    """Score ``hyps`` (id -> text) against manifest utterances (``asr.data.manifest.Utterance``) and write the report.

    Utterances without a hypothesis (skipped audio) are left out, as in ``results.json``.
    """
    scored = [u for u in utts if u.id in hyps]
    s = score([u.text for u in scored], [hyps[u.id] for u in scored], [u.id for u in scored])
    return write_report(out_dir, s, {u.id: u.speaker for u in scored}, {u.id: u.duration for u in scored}, title)

