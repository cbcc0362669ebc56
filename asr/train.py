"""The training loop: shards -> features (on the device) -> model -> CTC loss -> AdamW.

One process, or one rank under ``torchrun`` (DDP). Read top to bottom: ``setup`` (tokenizer,
CMVN, model, optimizer), then per epoch ``train_one_epoch`` (forward, CTC loss in fp32, backward,
clip, step, log) and ``validate`` (greedy dev WER), then ``save_checkpoint`` and the best package.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.config import RUN_KEYS, ExperimentConfig, to_dict
from asr.ctc_loss import ctc_loss
from asr.data.cpus import worker_cpus
from asr.data.manifest import Utterance
from asr.data.prefetch import prefetch_to_device
from asr.data.shards import ShardBatches, shard_metadata
from asr.decode.greedy import GreedyDecoder
from asr.evaluate import decode_utterances
from asr.features import CMVNAccumulator, FeatureExtractor, SpeakerMeans, batch_means, frame_lengths, to_device
from asr.gpu_memory import set_expandable_segments
from asr.metrics import score
from asr.model import AcousticModel
from asr.package import PackageError, atomic_save, read_checked, save_package, state_digest
from asr.recognizer import Recognizer
from asr.targets import Labeler
from asr.text import (Tokenizer, TokenizerError, build_tokenizer, load_sentencepiece, normalize,
                      tokenizer_from_state)

log = logging.getLogger("asr.train")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class TrainingError(RuntimeError):
    """Training cannot go on: too many non-finite losses in a row, a checkpoint that cannot be
    written, or (with ``strict``) the first bad input. The message says which and names the data."""


@dataclass
class Counters:
    infeasible: int = 0  # per epoch seen, like the others: an utterance left out twice counts twice
    untokenizable: int = 0
    nonfinite: int = 0
    nonfinite_run: int = 0
    scale_overflows: int = 0  # steps skipped because the loss scale was too high (lowered each time)
    problems: dict[str, str] = field(default_factory=dict)  # utterance id -> why it was left out


# GradScaler's own default: the first steps lower it where gradients overflow fp16.
INIT_LOSS_SCALE = 2.0**16


def lstm_in_fp16(device: torch.device, bf16: bool) -> bool:
    """Whether the model's LSTM runs in fp16. Under CUDA autocast torch casts cuDNN's RNN to fp16
    whatever the autocast dtype (bf16 included; the kernels are cuDNN's half ones), so its backward
    pass takes the loss's gradients in fp16. Those are small: with the loss per target token, a
    batch of ~23,000 tokens gives the LSTM's outputs gradients of ~3e-8 (median; measured on the mini
    model, benchmarks/RESULTS.md), half of them below fp16's smallest number and nearly all below its
    normal range. The CPU's bf16 autocast runs the LSTM in bf16 (fp32's range): no scaling needed."""
    return device.type == "cuda" and bf16


def loss_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """Dynamic loss scaling: the loss times a scale before backward, the gradients divided by it before
    clipping; the scale halves when they overflow and doubles after 2,000 steps that do not."""
    return torch.amp.GradScaler(device.type, init_scale=INIT_LOSS_SCALE, enabled=enabled)


def compute_loss(model: torch.nn.Module, frontend: FeatureExtractor, batch: dict, tokenizer: Tokenizer,
                 device: torch.device, bf16: bool, counters: Counters,
                 ctc: str = "torch") -> tuple[torch.Tensor, dict] | None:
    """CTC loss (sum over the batch / target tokens) of one batch; None if no utterance is usable.
    ``bf16``: run the model under bf16 autocast on ``device`` (the CTC loss stays fp32); ``ctc``: the
    CTC loss's implementation (``asr.ctc_loss.ctc_loss``).

    Batches from the training loader come labelled by its workers (``asr.targets.Labeler``); others
    are labelled here. Utterances left out (CTC-infeasible: their loss would be infinite; or
    untokenizable) are counted in ``counters``. Nothing here reads a value back from the device, so
    on a GPU the host queues the forward pass without waiting for it (and, with cuDNN's CTC loss, the
    backward pass too; torch's copies its lengths to the GPU, which waits).
    """
    if "targets" not in batch:
        stride = getattr(model, "module", model).cfg.stride  # model may be wrapped in DDP
        batch = Labeler(tokenizer, frontend.logmel.cfg, stride)(batch)
    for uid, kind, why in batch["dropped"]:
        setattr(counters, kind, getattr(counters, kind) + 1)
        counters.problems[uid] = why
    if not batch["ids"]:
        return None
    # Lengths stay on the host: what the step reports and the CTC loss's lengths come from them.
    wav_len = batch["lengths"]
    ntok = int(batch["target_lengths"].sum())
    wav = to_device(batch["wav"], device)  # pinned by the loader: no copy on the host
    means = batch.get("means")
    feats, _ = frontend(wav, to_device(wav_len, device), None if means is None else to_device(means, device))
    flen = frame_lengths(wav_len, frontend.logmel.cfg).clamp(max=feats.shape[1])
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        log_probs, out_len = model(feats, flen)
    # CTC in fp32 whatever the autocast: the model returns float32 log-probs.
    loss = ctc_loss(log_probs.float().transpose(0, 1), batch["targets"], out_len, batch["target_lengths"], ctc)
    frames = int(flen.sum())
    stats = {"utts": len(wav_len), "tokens": ntok, "frames": frames,
             "padding": 1.0 - frames / (feats.shape[0] * feats.shape[1]),
             "audio_s": float(wav_len.sum()) / 16000, "ids": list(batch["ids"])}
    return loss / ntok, stats


def lr_factor(step: int, warmup: int, total: int, final_frac: float, time_frac: float = 0.0) -> float:
    """Linear warm-up to 1, then cosine decay to ``final_frac`` at ``total`` steps, or earlier when
    ``time_frac`` (the fraction of a time budget used) is further along."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_frac))
    return final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def estimate_steps_per_epoch(shards: list[str], max_frames: int, world: int, accum: int) -> int:
    """From the shard index: total frames / frame budget, allowing 15% for padding and partial batches."""
    index_files = {Path(s).parent / f"{Path(s).name.rsplit('-', 1)[0]}.index.json" for s in shards}
    seconds = 0.0
    for f in index_files:
        if f.is_file():
            names = {Path(s).name for s in shards}
            seconds += sum(s["seconds"] for s in json.loads(f.read_text())["shards"] if s["path"] in names)
    if seconds == 0:
        seconds = sum(m["duration"] for m in shard_metadata(shards))
    return max(1, math.ceil(seconds * 100 / (0.85 * max_frames) / world / accum))


def fit_tokenizer(cfg: ExperimentConfig, shards: list[str]) -> Tokenizer:
    if cfg.tokenizer.model:
        if cfg.tokenizer.kind != "sentencepiece":
            raise TokenizerError(f"tokenizer.model={cfg.tokenizer.model} needs tokenizer.kind=sentencepiece, "
                                 f"got {cfg.tokenizer.kind!r}")
        return load_sentencepiece(cfg.tokenizer.model)
    if cfg.tokenizer.kind == "char":
        return build_tokenizer("char")
    texts = [normalize(m["text"]) for m in shard_metadata(shards)]
    return build_tokenizer(cfg.tokenizer.kind, texts, cfg.tokenizer.vocab_size, cfg.tokenizer.model_type)


def compute_cmvn(frontend: FeatureExtractor, loader: DataLoader, max_utts: int, device: torch.device,
                 strict: bool = False, speaker_means: dict[str, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Global mean/std of log-mel frames over (up to ``max_utts``) training utterances, after the
    utterance or speaker means are removed (``speaker_means``: see ``compute_speaker_means``).

    ``strict``: a sample the loader had to skip raises TrainingError (the training loop reports
    skips otherwise, so here they are only logged).
    """
    acc = CMVNAccumulator(frontend.logmel.cfg.n_mels)
    seen = 0
    with torch.no_grad(), tqdm(loader, desc="cmvn", unit="batch", leave=False) as bar:
        for batch in bar:
            if strict and batch.get("problems"):
                raise TrainingError(f"--strict: {batch['problems'][0]}")
            means = batch_means(speaker_means, batch["speakers"], acc.total.shape[0])
            feats, flen = frontend.logmel(batch["wav"].to(device), batch["lengths"].to(device), means)
            acc.add(feats, flen)
            seen += len(batch["ids"])
            if max_utts and seen >= max_utts:
                break
    if seen == 0:
        raise TrainingError("no training utterance could be read from the shards (the warnings above say why)")
    return acc.stats()


def compute_speaker_means(frontend: FeatureExtractor, loader: DataLoader, device: torch.device,
                          world: int = 1) -> dict[str, torch.Tensor]:
    """Each training speaker's mean raw log-mel (n_mels,), over one whole pass of ``loader`` (this
    rank's part of the shards; with ``world`` > 1 the ranks' sums are pooled, so all agree)."""
    acc = SpeakerMeans(frontend.logmel.cfg.n_mels)
    with torch.no_grad():
        for batch in tqdm(loader, desc="speaker means", unit="batch", leave=False):
            feats, flen = frontend.logmel.raw(batch["wav"].to(device), batch["lengths"].to(device))
            acc.add(feats, flen, batch["speakers"])
    if world > 1:
        parts: list = [None] * world
        dist.all_gather_object(parts, acc)
        acc = parts[0]
        for other in parts[1:]:
            acc.merge(other)
    return acc.means()


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model: AcousticModel, opt, sched, tokenizer: Tokenizer, cmvn, cfg: ExperimentConfig,
                    epoch: int, batch_in_epoch: int, step: int, best_wer: float, history: list,
                    running: dict | None = None, speaker_means: dict | None = None,
                    scaler_state: dict | None = None) -> None:
    """Write the whole training state atomically, with a checksum that ``load_checkpoint`` verifies;
    ``running`` holds the epoch's partial loss sums and the run's skip counters, so a resumed run
    reports the same numbers as an uninterrupted one."""
    state = {
        "format": "asr-train-state", "config": to_dict(cfg), "model": model.state_dict(),
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "tokenizer": tokenizer.state(),
        "cmvn": {"mean": cmvn[0], "std": cmvn[1], "speakers": speaker_means or {}},
        "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step, "best_wer": best_wer, "history": history, "rng": rng_state(), "running": running or {},
        "scaler": scaler_state or {},
    }
    state["sha256"] = state_digest(state)
    atomic_save(state, path)


def load_checkpoint(path: Path) -> dict:
    """Read a training state written by ``save_checkpoint``; PackageError if it is torn or altered."""
    state = read_checked(path, "training checkpoint")
    expected = state.pop("sha256", None)  # checkpoints written before the checksum have none
    if expected is not None and state_digest(state) != expected:
        raise PackageError(f"{path}: training checkpoint does not match its checksum (corrupt); "
                           "restore a good copy or start again without --resume")
    return state


def validate(model: AcousticModel, frontend: FeatureExtractor, tokenizer: Tokenizer, dev: list[Utterance],
             device: torch.device, max_frames: int, problems: set[str] | None = None, strict: bool = False) -> dict:
    """Greedy WER/CER on the dev utterances; unreadable dev audio is skipped and added to ``problems``
    (``strict``: raised as AudioError)."""
    rec = Recognizer(model, frontend, tokenizer, device)
    dec = decode_utterances(rec, GreedyDecoder(tokenizer), dev, max_frames=max_frames, num_workers=0, progress=False,
                            strict=strict)
    if problems is not None:
        problems.update(dec.problems)
    ids = [u.id for u in dev if u.id in dec.hyps]
    texts = {u.id: u.text for u in dev}
    s = score([texts[i] for i in ids], [dec.hyps[i].text for i in ids], ids)
    return {"wer": s.wer, "cer": s.cer}


# What a checkpoint's weights and tokenizer were made for; the rest (epochs, LR, batches) may change.
FIXED_SECTIONS = ("model", "features", "tokenizer")


def changed_settings(saved: dict, now: dict) -> list[str]:
    """Settings of FIXED_SECTIONS that differ between a checkpoint's config and this run's, as
    "section.key is NOW here, SAVED in the checkpoint"."""
    out = []
    for section in FIXED_SECTIONS:
        old, new = saved.get(section, {}), now.get(section, {})
        for key in sorted(set(old) & set(new)):
            if old[key] != new[key] and f"{section}.{key}" not in RUN_KEYS:
                out.append(f"{section}.{key} is {new[key]!r} here, {old[key]!r} in the checkpoint")
    return out


class StepLog:
    """Per-step and per-epoch records as JSON lines (``train_log.jsonl``), for plotting.

    A fresh run starts the file anew; a resumed one keeps the records up to its checkpoint's
    ``until_step`` (a run killed after its last checkpoint logged steps that it will redo).
    """

    def __init__(self, path: Path, enabled: bool, until_step: int | None = None):
        self.f = None
        if not enabled:
            return
        kept = []
        if until_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= until_step:
                        kept.append(line + "\n")
                except json.JSONDecodeError:  # a line torn by a kill
                    continue
        self.f = open(path, "w")
        self.f.writelines(kept)

    def write(self, **rec) -> None:
        if self.f:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()


class StopSignals:
    """While training: SIGTERM (a preempted or cancelled job) or Ctrl-C asks the loop to stop after
    the step it is in and save a checkpoint (``name`` is then the signal's name). A second Ctrl-C
    stops at once."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        log.warning("%s: stopping after this step to save a checkpoint (Ctrl-C again stops at once)", self.name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def init_loader_worker(worker_id: int, niceness: int = 0, cpus: set[int] | None = None) -> None:
    """A DataLoader worker leaves SIGTERM and Ctrl-C to the training process, which stops it after its
    checkpoint (a worker killed first would break the batch the loop is waiting for), lowers its CPU
    priority by ``niceness`` and, given ``cpus``, runs on those only (``asr.data.cpus.worker_cpus``)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if niceness:
        os.nice(niceness)
    if cpus:
        os.sched_setaffinity(0, cpus)


# Training on a GPU, the loader workers run this much nicer than the training process: they fill a
# prefetch queue with slack, while its threads launch the GPU's kernels, and the GPU idles for every
# microsecond those are kept off a core. (On the CPU the training process's own threads do the
# work and the workers must keep pace with them, so they share the cores equally.)
GPU_LOADER_NICENESS = 10


def process_threads(device: torch.device, threads: int) -> int:
    """torch's CPU threads for the training process: ``threads`` when set (> 0); else 1 on a GPU, 0
    (torch's default: every core) on the CPU.

    On a GPU the process's own CPU work is small tensors (a batch's lengths and targets), but above
    torch's grain size (32,768 elements; a batch's ~30,000 targets) an op splits across one thread
    per core and waits for the last: with loader workers on those cores, each such op took 7-11 ms
    in an H200 profile (``aten::eq`` on the targets), time in which no kernel was launched."""
    if threads > 0:
        return threads
    return 1 if device.type == "cuda" else 0


def train(cfg: ExperimentConfig, train_shards: list[str], dev: list[Utterance], exp_dir: str | Path,
          device: str = "auto", resume: bool = False, strict: bool = False,
          dev_problems: list[str] | None = None) -> dict:
    """Train a model; writes ``exp_dir/model.pt`` (best dev WER), ``ckpt/``, ``train_log.jsonl``.

    Bad data (unreadable shards or samples, untokenizable or CTC-infeasible transcripts, non-finite
    losses, unreadable dev audio; ``dev_problems``: the dev manifest's bad lines) is skipped and
    listed in the summary's ``skipped``; ``strict`` raises TrainingError at the first instead.
    SIGTERM or Ctrl-C stops after the current step with a checkpoint (the summary's ``interrupted``
    names the signal). Returns a summary (best dev WER, epochs, steps, counts, the skipped items,
    wall time).
    """
    with StopSignals() as stop:
        return _train(cfg, train_shards, dev, Path(exp_dir), device, resume, strict, dev_problems or [], stop)


def _train(cfg: ExperimentConfig, train_shards: list[str], dev: list[Utterance], exp: Path, device: str,
           resume: bool, strict: bool, dev_problems: list[str], stop: StopSignals) -> dict:
    tc = cfg.train
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    dd = setup_distributed(device)
    if device == "cuda":
        device = f"cuda:{dd.local_rank}"
        torch.cuda.set_device(dd.local_rank)
        # Off: batch shapes change every step, and a new shape would be benchmarked each time (on an
        # H100, 5 x 1024: median step 227 ms with it, 134 ms without; benchmarks/RESULTS.md).
        torch.backends.cudnn.benchmark = False
        log.info("CUDA allocator: %s", set_expandable_segments(tc.expandable_segments))
    dev_t = torch.device(device)
    threads = process_threads(dev_t, tc.threads)
    if threads:
        torch.set_num_threads(threads)
    use_bf16 = tc.bf16 if dev_t.type == "cuda" else tc.cpu_bf16
    if use_bf16 and dev_t.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("train.cpu_bf16: this CPU has no native bf16 (AVX512-BF16/AMX); training in fp32")
        use_bf16 = False
    if len(train_shards) < dd.world:
        # A rank without a shard would end every epoch at once for all ranks (they stop together).
        raise TrainingError(f"{len(train_shards)} training shard(s) for {dd.world} ranks: every rank needs at least "
                            "one; write more, smaller shards (asr shard --max-per-shard)")
    (exp / "ckpt").mkdir(parents=True, exist_ok=True)
    state_path = exp / "ckpt" / "state.pt"
    if dd.main:
        # A run killed while writing a checkpoint leaves its temporary file (atomic_save's); the
        # checkpoint itself is whole. Remove the leftovers so repeated kills do not fill the disk.
        for tmp in (exp / "ckpt").glob(f".{state_path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    state = load_checkpoint(state_path) if resume and state_path.exists() else None
    if resume and state is None:
        log.warning("--resume: no checkpoint at %s, starting from scratch", state_path)
    if state:
        changed = changed_settings(state["config"], to_dict(cfg))
        if changed:
            raise TrainingError(f"--resume: {'; '.join(changed[:4])}{' ...' if len(changed) > 4 else ''} "
                                f"(checkpoint {state_path}); resume with the checkpoint's settings, or start a new --exp")
    elif dd.main:
        # A fresh run: epoch packages of an earlier run here would read as this run's.
        for old in (exp / "ckpt").glob("epoch-*.pt"):
            old.unlink()
    if dd.main:
        (exp / "config.json").write_text(json.dumps(to_dict(cfg), indent=1) + "\n")

    random.seed(tc.seed)
    np.random.seed(tc.seed)
    torch.manual_seed(tc.seed)

    # Setup: tokenizer, CMVN, model, optimizer, schedule.
    tokenizer = tokenizer_from_state(state["tokenizer"]) if state else fit_tokenizer(cfg, train_shards)
    data = ShardBatches(train_shards, tc.max_frames, tc.max_batch, tc.num_buckets, tc.max_duration,
                        tc.shuffle_buffer, tc.seed, dd.rank, dd.world, pad_to=tc.pad_to_frames)
    data.check_split(tc.num_workers)
    # The loader gets its own generator: starting an epoch must not draw from the global RNG, or a
    # resumed run would diverge from an uninterrupted one.
    loader = DataLoader(data, batch_size=None, num_workers=tc.num_workers, pin_memory=dev_t.type == "cuda",
                        prefetch_factor=4 if tc.num_workers else None, persistent_workers=False,
                        generator=torch.Generator().manual_seed(tc.seed), worker_init_fn=functools.partial(
                            init_loader_worker, niceness=GPU_LOADER_NICENESS if dev_t.type == "cuda" else 0,
                            cpus=worker_cpus(tc.reserve_cores) if tc.num_workers else None))
    frontend = FeatureExtractor(cfg.features, cfg.specaug).to(dev_t)
    spk_means: dict[str, torch.Tensor] = {}
    if state:
        cmvn = (state["cmvn"]["mean"], state["cmvn"]["std"])
        spk_means = state["cmvn"].get("speakers", {})
    else:
        if cfg.features.speaker_cmn and tc.speaker_cmn_prob > 0:
            spk_means = compute_speaker_means(frontend, loader, dev_t, dd.world)
            log.info("speaker CMN: mean log-mels of %d training speakers", len(spk_means))
        if dd.main:
            cmvn = compute_cmvn(frontend, loader, tc.cmvn_utts, dev_t, strict, spk_means)
        if dd.world > 1:  # every rank must normalise identically: rank 0 computes, the others receive
            n = cfg.features.n_mels
            stats = torch.stack(cmvn).to(dev_t) if dd.main else torch.zeros(2, n, device=dev_t)
            dist.broadcast(stats, 0)
            cmvn = (stats[0].cpu(), stats[1].cpu())
    frontend.cmvn.set_stats(cmvn[0].to(dev_t), cmvn[1].to(dev_t))
    # From here on the loader workers also tokenize and leave out what CTC cannot train on (the CMVN
    # and speaker statistics above are over all the audio, as before).
    data.label = Labeler(tokenizer, cfg.features, cfg.model.stride, tc.pad_to_frames)
    model = AcousticModel(cfg.model, cfg.features.n_mels, tokenizer.vocab_size).to(dev_t)
    if state:
        model.load_state_dict(state["model"])
    net = DistributedDataParallel(model, device_ids=[dd.local_rank] if dev_t.type == "cuda" else None) if dd.world > 1 else model
    if dd.world > 1 and tc.ddp_bf16_grads:
        net.register_comm_hook(None, bf16_compress_hook)
    # fused: one CUDA kernel for all ~120M parameters of the large model instead of several per tensor list.
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.9, tc.adam_beta2), weight_decay=tc.weight_decay,
                            fused=dev_t.type == "cuda")
    steps_per_epoch = estimate_steps_per_epoch(train_shards, tc.max_frames, dd.world, tc.accum_steps)
    total_steps = steps_per_epoch * tc.epochs
    pace = {"time_frac": 0.0}  # the fraction of max_minutes used, when train.schedule_by_time
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, tc.warmup_steps, total_steps, tc.final_lr_frac, pace["time_frac"]))
    scaler = loss_scaler(dev_t, tc.loss_scaling and lstm_in_fp16(dev_t, use_bf16))
    epoch, start_batch, step, best_wer, history = 0, 0, 0, float("inf"), []
    if state:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state.get("scaler"):  # (a CPU run's checkpoint has none: a fresh scale)
            scaler.load_state_dict(state["scaler"])
        epoch, start_batch, step = state["epoch"], state["batch_in_epoch"], state["step"]
        best_wer, history = state["best_wer"], state["history"]
        if best_wer < 0:  # checkpoints before 2026-11-28 kept -epoch here when there was no dev set
            best_wer = float("inf")
        set_rng_state(state["rng"])
        log.info("resumed from %s: epoch %d, batch %d, step %d", state_path, epoch + 1, start_batch, step)
    if dd.main:
        log.info("model: %.2fM parameters, vocab %d (%s); ~%d steps/epoch, %d epochs, device %s, world %d",
                 model.num_params() / 1e6, tokenizer.vocab_size, tokenizer.kind, steps_per_epoch, tc.epochs, device, dd.world)
    steplog = StepLog(exp / "train_log.jsonl", dd.main, until_step=state["step"] if state else None)
    counters = Counters()
    # The checkpoint holds the counts and skips of all ranks so far: rank 0 carries them on, the
    # others count only their own from here (``totals`` adds them up).
    running = state.get("running", {}) if state else {}  # checkpoints before this field have none
    restored = running if dd.main else {}
    for k, v in restored.get("counters", {}).items():
        setattr(counters, k, v)
    counters.problems.update(restored.get("problems", {}))
    # A resumed run goes on with the clock where it stopped: train.max_minutes is the whole run's
    # budget, and a learning rate paced by it must not start its decay over.
    t_start = time.time() - running.get("elapsed", 0.0)
    deadline = t_start + tc.max_minutes * 60 if tc.max_minutes > 0 else float("inf")
    stopped_early = signal_stop = False
    if state and tc.max_minutes > 0:
        log.info("%.1f of train.max_minutes=%g used before this resume", (time.time() - t_start) / 60, tc.max_minutes)
        if time.time() > deadline:
            log.warning("train.max_minutes=%g is used up: nothing to do (raise it to train on)", tc.max_minutes)
            stopped_early = True

    bar: tqdm | None = None

    def fail(msg: str) -> NoReturn:
        """Stop the run: close the progress bar first, so the error is printed on a line of its own."""
        if bar is not None:
            bar.close()
        raise TrainingError(msg)

    def totals() -> tuple[dict[str, int], list[str], dict[str, str]]:
        """(counts, skipped items, problems by id) of all ranks: each read its own shards."""
        mine = ({"infeasible": counters.infeasible, "untokenizable": counters.untokenizable,
                 "nonfinite": counters.nonfinite, "scale_overflows": counters.scale_overflows},
                sorted(skipped), dict(counters.problems))
        parts = [mine]
        if dd.world > 1:  # every rank calls this at the same points (checkpoints, the end)
            parts = [None] * dd.world
            dist.all_gather_object(parts, mine)
        counts = {k: sum(p[0][k] for p in parts) for k in mine[0]}
        problems = {uid: why for p in parts for uid, why in p[2].items()}
        return counts, sorted({x for p in parts for x in p[1]}), problems

    def checkpoint(ep: int, batch_pos: int) -> None:
        counts, all_skipped, problems = totals()
        if dd.main:
            try:
                partial = {"loss": sums["loss"], "tokens": sums["tokens"]} if batch_pos else {}
                save_checkpoint(state_path, model, opt, sched, tokenizer, cmvn, cfg, ep, batch_pos, step, best_wer,
                                history, {"sums": partial, "skipped": all_skipped, "problems": problems,
                                          "elapsed": time.time() - t_start, "counters": counts},
                                spk_means, scaler.state_dict())
            except OSError as e:  # e.g. ENOSPC: atomic_save left the previous checkpoint untouched
                fail(f"cannot write checkpoint {state_path} ({e.strerror or e}); the last good checkpoint is "
                     "intact, free space and rerun with --resume")

    skipped: set[str] = set(restored.get("skipped", [])) | set(dev_problems)
    sums = {"loss": 0.0, "tokens": 0, "audio_s": 0.0}
    data_wait = 0.0

    while epoch < tc.epochs and not stopped_early:
        data.set_epoch(epoch, start_batch)
        net.train()
        frontend.train()
        it = prefetch_to_device(iter(loader), dev_t)
        batch_pos = start_batch
        # Resuming mid-epoch: carry on the epoch's loss sums, so its train_loss covers the whole epoch.
        # (audio_s restarts: it is only used for throughput since the epoch's clock started.)
        carried = running.get("sums", {}) if start_batch else {}
        sums = {"loss": carried.get("loss", 0.0), "tokens": carried.get("tokens", 0), "audio_s": 0.0}
        bar = tqdm(total=steps_per_epoch * tc.accum_steps, initial=start_batch, desc=f"epoch {epoch + 1}/{tc.epochs}",
                   unit="batch", disable=not dd.main)
        t_epoch = time.time()
        data_wait = 0.0
        while True:
            t_wait = time.perf_counter()
            batch = next(it, None)
            data_wait += time.perf_counter() - t_wait
            out_of_data, signalled = batch is None, stop.name is not None
            if dd.world > 1:
                # Stop the epoch on every rank as soon as one rank runs out, so no rank waits forever
                # in an all-reduce that the others never join; and all stop for a signal together.
                flags = torch.tensor([float(out_of_data), float(signalled)], device=dev_t)
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                out_of_data, signalled = (bool(f) for f in flags.tolist())
            # At a step's boundary only: the micro-batches of a step all count, or none does.
            if signalled and (batch_pos - start_batch) % tc.accum_steps == 0:
                stopped_early = signal_stop = True  # on every rank, whichever got the signal
                break
            if out_of_data:
                break
            batch_pos += 1
            skipped.update(batch.get("problems", []))
            batch["means"] = batch_means(spk_means, batch["speakers"], cfg.features.n_mels)
            if batch["means"] is not None and tc.speaker_cmn_prob < 1:  # NaN rows: the utterance's own mean
                own = torch.rand(len(batch["speakers"])) >= tc.speaker_cmn_prob
                batch["means"][own] = float("nan")
            if strict and batch.get("problems"):
                fail(f"--strict: {batch['problems'][0]}")
            left_out = len(counters.problems)
            micro = (batch_pos - start_batch) % tc.accum_steps
            # Under DDP, gradients are all-reduced only on the micro-batch that ends an accumulation.
            sync = micro == 0 or dd.world == 1
            with net.no_sync() if not sync else contextlib.nullcontext():
                out = compute_loss(net, frontend, batch, tokenizer, dev_t, use_bf16, counters, tc.ctc)
                if dd.world > 1:
                    # All ranks agree before backward (where DDP all-reduces): if any rank's loss is
                    # unusable, every rank skips this batch, so none waits for the others.
                    ok = out is not None and bool(torch.isfinite(out[0]))
                    flag = torch.tensor([1.0 if ok else 0.0], device=dev_t)
                    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                    ok = bool(flag.item() == 1.0)
                else:
                    # One process queues the backward pass at once: looking at the loss first would
                    # leave the GPU idle while the host waits for the forward pass, then launches.
                    ok = out is not None
                if ok:
                    scaler.scale(out[0] / tc.accum_steps).backward()
            if strict and len(counters.problems) > left_out:
                fail(f"--strict: {list(counters.problems.values())[left_out]}")
            # The step's one read from the device: the loss, and at the end of an accumulation the
            # gradient norm (non-finite gradients skip the step as a non-finite loss does).
            loss_v, gnorm, unscaled = float("nan"), None, False
            if out is not None:
                loss_t = out[0].detach().float()
                if ok and micro == 0:
                    scaler.unscale_(opt)  # (nothing without loss scaling)
                    unscaled = True
                    norm_t = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                    loss_v, gnorm = torch.stack([loss_t, norm_t.float()]).tolist()
                else:
                    loss_v = loss_t.item()
            bad = None  # (what, value) when the batch must be skipped
            if out is not None and not math.isfinite(loss_v):
                bad = ("loss", loss_v)
            elif gnorm is not None and not math.isfinite(gnorm):
                bad = ("gradient norm", gnorm)
            if unscaled:
                scaler.update()  # lowers the scale if the gradients were not finite
            if bad is not None and bad[0] == "gradient norm" and scaler.is_enabled() and scaler.get_scale() >= 1:
                # A finite loss whose scaled gradients overflowed: the scale was too high, not the batch
                # bad (it is lower now). Below a scale of 1 such a batch counts as a bad one again.
                counters.scale_overflows += 1
                if dd.main:
                    log.info("gradients overflowed at the loss scale; step skipped, scale now %g", scaler.get_scale())
                opt.zero_grad(set_to_none=True)
                continue
            if bad is not None:
                counters.nonfinite += 1
                counters.nonfinite_run += 1
                ids = ", ".join(out[1]["ids"])
                log.warning("non-finite %s, batch skipped (ids %s)", bad[0], ids)
                skipped.add(f"non-finite {bad[0]} ({bad[1]}) in the batch of {ids}; batch skipped")
                if strict or counters.nonfinite_run >= tc.max_nonfinite:
                    fail(f"{counters.nonfinite_run} non-finite loss(es) in a row (train.max_nonfinite="
                         f"{tc.max_nonfinite}); last batch: {ids}")
                ok = False
            if not ok:
                if out is not None or dd.world > 1:
                    opt.zero_grad(set_to_none=True)
                continue
            stats = out[1]
            counters.nonfinite_run = 0
            sums["loss"] += loss_v * stats["tokens"]
            sums["tokens"] += stats["tokens"]
            sums["audio_s"] += stats["audio_s"]
            if micro != 0:
                continue
            opt.step()
            elapsed = time.time() - t_start
            if dd.world > 1 and tc.max_minutes > 0:
                # Every rank must see the same clock: the LR paced by time has to be identical on all
                # replicas (or their weights drift apart), and all must stop after the same step (or
                # one waits forever in an all-reduce the others never join).
                clock = torch.tensor([elapsed], dtype=torch.float64, device=dev_t)
                dist.all_reduce(clock, op=dist.ReduceOp.MAX)
                elapsed = clock.item()
            if tc.schedule_by_time and tc.max_minutes > 0:
                pace["time_frac"] = elapsed / (tc.max_minutes * 60)
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(tc.accum_steps)
            if dd.main and step % tc.log_every == 0:
                now = time.time()
                # audio_x: seconds of audio trained per wall second since the epoch began, all ranks.
                rec = {"step": step, "epoch": epoch + 1, "loss": round(loss_v, 4), "lr": sched.get_last_lr()[0],
                       "grad_norm": round(gnorm, 3), "padding": round(stats["padding"], 3), "batch_utts": stats["utts"],
                       "audio_x": round(sums["audio_s"] * dd.world / max(now - t_epoch, 1e-6), 1),
                       "data_wait": round(data_wait / max(now - t_epoch, 1e-6), 3), "time": round(now - t_start, 1)}
                if scaler.is_enabled():
                    rec["loss_scale"] = scaler.get_scale()
                steplog.write(**rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.1e}", x=rec["audio_x"])
            if tc.save_every_steps and step % tc.save_every_steps == 0:
                checkpoint(epoch, batch_pos)
            if t_start + elapsed > deadline:
                stopped_early = True
                log.info("max_minutes=%.1f reached; stopping after step %d", tc.max_minutes, step)
                break
        bar.close()
        if signal_stop:
            # No validation: a preempted job may have seconds. The batch fetched last was not used.
            checkpoint(epoch, batch_pos)
            log.warning("%s: stopped after step %d; checkpoint %s saved, continue with --resume",
                        stop.name or "a signal to another rank", step, state_path)
            break
        if stopped_early and batch is not None:
            # Out of time mid-epoch: keep the position so --resume continues with the next batch, and
            # keep the newest weights as the model when they score better (or when there is no dev set).
            if dd.main:
                wer_now = None
                if dev:
                    # An uninterrupted run does not validate here: its random state must stay as it
                    # is (the dev loader draws a seed), or the resumed run would not be the same.
                    with torch.random.fork_rng(devices=[]):
                        wer_now = validate(model, frontend, tokenizer, dev, dev_t, tc.max_frames, skipped, strict)["wer"]
                if wer_now is None or wer_now <= best_wer or not (exp / "model.pt").exists():
                    best_wer = min(best_wer, float("inf") if wer_now is None else wer_now)
                    meta = {"epoch": epoch, "step": step, "dev_wer": wer_now, "config": to_dict(cfg),
                            "partial_epoch": True}
                    save_package(exp / "model.pt", model, cfg.features, cmvn[0], cmvn[1], tokenizer, meta)
            checkpoint(epoch, batch_pos)
            break
        start_batch = 0
        epoch += 1
        rec = {"epoch": epoch, "step": step, "train_loss": sums["loss"] / max(sums["tokens"], 1),
               "infeasible": counters.infeasible, "nonfinite": counters.nonfinite, "time": round(time.time() - t_start, 1)}
        if dd.main and dev:
            scores = validate(model, frontend, tokenizer, dev, dev_t, tc.max_frames, skipped, strict)
            rec.update({f"dev_{k}": v for k, v in scores.items()})
            log.info("epoch %d: train loss %.3f, dev WER %.2f%%, CER %.2f%%", epoch, rec["train_loss"],
                     100 * rec["dev_wer"], 100 * rec["dev_cer"])
        history.append(rec)
        if dd.main:
            steplog.write(**rec)
            wer_now = rec.get("dev_wer")  # None without dev data: then the latest model is the one kept
            meta = {"epoch": epoch, "step": step, "dev_wer": rec.get("dev_wer"), "config": to_dict(cfg)}
            save_package(exp / "ckpt" / f"epoch-{epoch}.pt", model, cfg.features, cmvn[0], cmvn[1], tokenizer, meta)
            old = exp / "ckpt" / f"epoch-{epoch - tc.keep_epochs}.pt"
            old.unlink(missing_ok=True)
            if wer_now is None or wer_now <= best_wer:
                best_wer = min(best_wer, float("inf") if wer_now is None else wer_now)
                save_package(exp / "model.pt", model, cfg.features, cmvn[0], cmvn[1], tokenizer, meta)
        checkpoint(epoch, 0)
    counts, all_skipped, problems = totals()
    if dd.main and (counts["infeasible"] or counts["untokenizable"]):
        log.warning("filtered %d CTC-infeasible and %d untokenizable training utterances (counted per epoch)",
                    counts["infeasible"], counts["untokenizable"])
    if dd.main and all_skipped:
        log.warning("%d bad training or dev items were skipped, e.g. %s", len(all_skipped), "; ".join(all_skipped[:3]))
    summary = {"epochs": epoch, "steps": step, "best_dev_wer": None if best_wer == float("inf") else best_wer,
               **counts, "skipped": sorted(set(all_skipped) | set(problems.values())),
               "train_seconds": round(time.time() - t_start, 1)}
    if signal_stop:
        summary["interrupted"] = stop.name or "SIGTERM"  # (only rank 0's summary is printed and kept)
    if dd.main:
        (exp / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if dd.world > 1:
        # The DDP wrapper (with its comm hook's futures) must go before gloo does: destroyed after
        # destroy_process_group, it aborted ~5% of processes at exit ("terminate called without an
        # active exception"), measured with the bf16 hook in tests/test_ddp.py.
        del net
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
    return summary
