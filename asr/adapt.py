"""Unsupervised speaker adaptation: fine-tune a model on its own confident transcripts of a speaker's
untranscribed audio (self-training), a few rounds, each round decoding again with the adapted model.

Each round: decode every target utterance with beam search (and the LM, when given), as recorded
and played 0.9-1.1 times as fast; rank the utterances by how many of the perturbed copies give the
same hypothesis, then by the margin between the best and second-best hypothesis; fine-tune the whole
model for a few epochs on the most confident share (half in the first round, more in each later
one) as if its hypotheses were transcripts, each epoch at a random one of the speeds, mixed with
labelled utterances of the training data so that the model does not drift towards what it already
says (without them a model told only its own output starts deleting words after a few rounds).

The target manifest's texts are never used for training; where they exist, each round logs the WER
of the chosen pseudo-transcripts, for the user to see how good the labels were.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from asr.audio import AudioError, load_audio
from asr.data.augment import speed_perturb
from asr.data.manifest import Utterance
from asr.data.shards import Sample, pad_batch
from asr.decode.beam import BeamSearchDecoder
from asr.evaluate import speaker_means
from asr.features import batch_means
from asr.metrics import score
from asr.model import AcousticModel
from asr.recognizer import Recognizer
from asr.train import Counters, compute_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptConfig:
    rounds: int = 4
    keep: float = 0.5  # share of the target utterances (the most confident) used as transcripts in round 1
    keep_step: float = 0.15  # ... growing by this much each round (up to all of them) as the model adapts
    epochs: int = 5  # fine-tuning passes per round
    lr: float = 3e-4
    batch_size: int = 32
    source_utts: int = 300  # labelled training utterances mixed into every epoch (0: none)
    # The target is also heard played at these speeds: clips whose hypotheses agree at more of them
    # are chosen first (the margin breaks ties), and fine-tuning draws each chosen clip at one of its
    # speeds, 1.0 included, each epoch (empty: by margin alone, unperturbed).
    speeds: tuple[float, ...] = (0.9, 0.95, 1.05, 1.1)
    seed: int = 0


def load_samples(utts: list[Utterance], what: str) -> tuple[list[Sample], list[str]]:
    """Read the audio of ``utts``; unreadable files are reported (one line each) and left out."""
    samples, problems = [], []
    for u in tqdm(utts, desc=f"load {what}", unit="utt", leave=False):
        try:
            samples.append(Sample(u.id, load_audio(u.audio), u.text, u.speaker))
        except AudioError as e:
            log.warning("skipped: %s", e)
            problems.append(str(e))
    return samples, problems


def _batches(samples: list[Sample], size: int):
    for i in range(0, len(samples), size):
        yield pad_batch(samples[i : i + size])


def decode_with_margins(rec: Recognizer, decoder: BeamSearchDecoder, samples: list[Sample],
                        means: dict[str, torch.Tensor] | None) -> dict[str, tuple[str, float]]:
    """id -> (best hypothesis text, its score minus the second best's; inf where there is no second)."""
    n_mels = rec.frontend.logmel.cfg.n_mels
    order = sorted(samples, key=lambda s: s.wav.shape[0])  # similar lengths: little padding
    out = {}
    for batch in _batches(order, 32):
        lp, lens = rec.log_probs(batch["wav"], batch["lengths"], batch_means(means, batch["speakers"], n_mels))
        lp, lens = lp.float().cpu(), lens.cpu()
        for i, uid in enumerate(batch["ids"]):
            nb = decoder.nbest(lp[i, : int(lens[i])], 2)
            if not nb:
                out[uid] = ("", 0.0)
                continue
            out[uid] = (nb[0].text, nb[0].score - nb[1].score if len(nb) > 1 else math.inf)
    return out


def most_confident(decoded: dict[str, tuple[str, float]], keep: float,
                   agreement: dict[str, int] | None = None) -> list[str]:
    """Ids of the ``keep`` share of ``decoded`` with the largest margins, those with the largest
    ``agreement`` first where it is given; empty hypotheses are never chosen.

    (Taking the share within each hypothesis length instead, so that long strings are not crowded
    out by short ones, was worse on the digits dev speaker after three rounds without source clips,
    15.7% mean WER against 14.7%, and no better with them, 14.4% both: benchmarks/RESULTS.md.)"""
    agreement = agreement or {}
    ids = sorted((u for u, (text, _) in decoded.items() if text), key=lambda u: (-agreement.get(u, 0), -decoded[u][1]))
    return ids[: int(round(keep * len(decoded)))]


def speed_views(rec: Recognizer, target: list[Sample], speeds: tuple[float, ...]
                ) -> tuple[list[list[Sample]], dict[str, torch.Tensor] | None]:
    """``target`` as heard at 1.0 and at each of ``speeds``: one list per speed, 1.0 first, in
    ``target``'s order; and, for a speaker-CMN model, every view's speaker means (evaluate's pass).
    A perturbed view's speaker is named "SPEAKER@SPEED", so one dict holds the means of all views."""
    views, means = [target], None
    speeds = tuple(v for v in speeds if v != 1.0)
    views += [[Sample(s.id, speed_perturb(s.wav, v), s.text, None if s.speaker is None else f"{s.speaker}@{v:g}")
               for s in target] for v in speeds]
    if rec.frontend.logmel.cfg.speaker_cmn:
        means = {}
        for heard in views:
            means.update(speaker_means(rec, ((b, []) for b in _batches(heard, 64)), progress=False))
    return views, means


def adapt(rec: Recognizer, decoder: BeamSearchDecoder, target: list[Sample], source: list[Sample],
          cfg: AdaptConfig, log_path: str | Path | None = None) -> list[dict]:
    """Self-train ``rec.model`` in place on ``target`` (texts unused), with ``source`` (labelled)
    mixed in; returns one record per round (also appended to ``log_path`` as JSON lines)."""
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    model: AcousticModel = rec.model
    views, means = speed_views(rec, target, cfg.speeds)
    source = rng.sample(source, min(cfg.source_utts, len(source)))
    # Source utterances are normalised by their own mean (their speakers are not in ``means``):
    # the way a speaker-CMN recipe trains (train.speaker_cmn_prob 0).
    source = [Sample(s.id, s.wav, s.text, None) for s in source]
    truth = {s.id: s.text for s in target}
    records = []
    for rnd in range(cfg.rounds):
        t0 = time.perf_counter()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)  # fresh moments each round
        decoded = decode_with_margins(rec, decoder, target, means)
        agreement = dict.fromkeys(decoded, 0)
        for heard in views[1:]:
            for u, (text, _) in decode_with_margins(rec, decoder, heard, means).items():
                agreement[u] += text == decoded[u][0]
        chosen = set(most_confident(decoded, min(1.0, cfg.keep + rnd * cfg.keep_step), agreement))
        picked = [j for j, s in enumerate(target) if s.id in chosen]
        counters, losses = Counters(), []
        model.train()
        bar = tqdm(total=cfg.epochs * math.ceil((len(picked) + len(source)) / cfg.batch_size),
                   desc=f"adapt round {rnd + 1}", unit="batch", leave=False)
        for _ in range(cfg.epochs):
            # each chosen clip at one of its speeds: the speaker's voice a little higher or lower
            # each time, its transcript the same (measured on the dev speaker: RESULTS.md)
            items = [views[rng.randrange(len(views))][j] for j in picked]
            items = [Sample(s.id, s.wav, decoded[s.id][0], s.speaker) for s in items] + source
            rng.shuffle(items)
            for i in range(0, len(items), cfg.batch_size):
                batch = pad_batch(items[i : i + cfg.batch_size])
                batch["means"] = batch_means(means, batch["speakers"], model.n_mels)
                out = compute_loss(model, rec.frontend, batch, rec.tokenizer, rec.device, False, counters)
                bar.update()
                if out is None or not torch.isfinite(out[0]):
                    continue
                opt.zero_grad(set_to_none=True)
                out[0].backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                losses.append(out[0].item())
        bar.close()
        model.eval()
        labelled = [u for u in chosen if truth[u]]
        rec_ = {"round": rnd + 1, "target_utts": len(target), "pseudo_labelled": len(chosen),
                "source_utts": len(source), "loss": sum(losses) / max(len(losses), 1),
                "left_out": counters.infeasible + counters.untokenizable,
                "seconds": round(time.perf_counter() - t0, 1)}
        if labelled:  # diagnostics only: how good the chosen pseudo-transcripts were
            rec_["pseudo_label_wer"] = score([truth[u] for u in labelled], [decoded[u][0] for u in labelled]).wer
        log.info("round %d: %s", rnd + 1, rec_)
        records.append(rec_)
        if log_path is not None:
            with open(log_path, "a") as f:
                f.write(json.dumps(rec_) + "\n")
    return records
