"""Training throughput from real shards, beside the bare nn.LSTM stack at the same batch shapes.

For each model size, runs the real training step (GPU/CPU features + SpecAugment, conv subsampling,
BiLSTM in --lstm-layouts, CTC in fp32, backward with asr train's loss scaling, clip, AdamW) for a
fixed number of steps from shards, then times a bare ``nn.LSTM`` forward+backward on the very batch
shapes the trainer saw. Prints a Markdown table: audio seconds per wall second (x real time), padding fraction, the share of wall
time spent waiting on data, our throughput as a percentage of the bare LSTM's, and on a GPU the
host-device synchronisations per step (each one idles the GPU while the host catches up; with
``--profile``, where they come from) and the peak GPU memory of the training steps (what bounds
``max_frames``), and how often its memory allocators called the driver in the timed steps (a step with
only cached memory calls it never). ``--variants`` adds rows that each change one thing from asr train's set-up
("train"), on the same batches: "preloaded" reads them before the steps and stops the loader's
workers (what the workers cost the training process beside data wait: they share its cores);
"cudnn-ctc" takes cuDNN's CTC loss (no host-device waits) in place of torch's (8 a step); "no-prefetch"
copies each batch to the GPU at the start of its own step instead of one step ahead; "reserved-cores"
keeps ``--reserve-cores`` physical cores free of loader workers (``train.reserve_cores``); "pad-to"
pads each batch to a multiple of ``--pad-to`` frames (``train.pad_to_frames``: fewer distinct batch
shapes, more padding; its batches differ, and its bare LSTM runs on them); "classic-alloc" runs the CUDA
allocator without expandable segments (``train.expandable_segments=false``); "no-scaling" trains
without the dynamic loss scaling that asr train gives the fp16 LSTM on a GPU
(``train.loss_scaling=false``); "all-threads" leaves the training process torch's default CPU threads
(one per core) where asr train gives it one on a GPU (``train.threads``). Each row also says how many
of its timed steps had a batch of a shape no step before it had (what per-shape set-up costs).

    python benchmarks/train_throughput.py --shards data/mini/shards/train.index.json \
        --sizes 2x128 3x256 --steps 20            # CPU
    python benchmarks/train_throughput.py --shards ... --sizes 4x320 5x1024 --steps 50 \
        --max-frames 192000 --device cuda         # one GPU, bf16
"""
from __future__ import annotations

import argparse
import functools
import gc
import itertools
import math
import statistics
import time
import warnings
from collections import Counter
from typing import Iterator

import torch
from torch.profiler import record_function
from torch.utils.data import DataLoader

from asr.config import FeatureConfig, ModelConfig, SpecAugConfig
from asr.data.cpus import worker_cpus
from asr.data.prefetch import prefetch_to_device
from asr.data.shards import ShardBatches, resolve_shards, shard_metadata
from asr.features import FeatureExtractor
from asr.gpu_memory import expandable_in_use, set_expandable_segments
from asr.model import AcousticModel
from asr.targets import Labeler
from asr.text import Tokenizer, build_tokenizer, normalize
from asr.train import (GPU_LOADER_NICENESS, Counters, compute_loss, init_loader_worker, loss_scaler, lstm_in_fp16,
                       process_threads)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


ALLOCATOR_EVENTS = {"num_device_alloc": "GPU allocations (cudaMalloc)", "num_device_free": "GPU frees (cudaFree: waits)",
                    "num_alloc_retries": "allocator retries (cache flushed: waits)",
                    "host:num_host_alloc": "pinned host allocations", "host:num_host_free": "pinned host frees"}


def allocator_events(device: torch.device) -> Counter:
    """The CUDA caching allocators' event counters so far (ALLOCATOR_EVENTS): each one is a call into
    the driver that a step with only cached memory would not make; empty on the CPU."""
    if device.type != "cuda":
        return Counter()
    stats = torch.cuda.memory_stats(device)
    host = torch.cuda.host_memory_stats() if hasattr(torch.cuda, "host_memory_stats") else {}
    return Counter({k: (host if k.startswith("host:") else stats).get(k.removeprefix("host:"), 0)
                    for k in ALLOCATOR_EVENTS})


VARIANTS = ("train", "preloaded", "cudnn-ctc", "no-prefetch", "reserved-cores", "pad-to", "classic-alloc",
            "no-scaling", "all-threads")


def tokenizer(kind: str, shards: list[str], texts: int = 3000) -> Tokenizer:
    """conf/large.yaml's units (SentencePiece, 256, unigram) fitted on the first ``texts`` transcripts
    of ``shards``, or characters. (The units set the CTC targets' lengths: a 17 s utterance has ~250
    characters, past the 255 labels cuDNN's CTC loss takes, and ~100 of these units.)"""
    if kind == "char":
        return build_tokenizer("char")
    first = itertools.islice(shard_metadata(shards), texts)
    return build_tokenizer("sentencepiece", [normalize(m["text"]) for m in first], 256, "unigram")


def run_ours(size: str, layout: str, variant: str, shards: list[str], tok: Tokenizer, args,
             device: torch.device) -> dict:
    layers, hidden = (int(x) for x in size.split("x"))
    torch.set_num_threads(args.all_threads if variant == "all-threads" else args.threads)
    if device.type == "cuda":  # as asr train sets it up, before this row's model and batches take memory
        gc.collect()  # the row before's tensors, so that emptying the cache releases their memory too
        set_expandable_segments(variant != "classic-alloc")
    cfg = ModelConfig(hidden=hidden, layers=layers, dropout=0.1, lstm_layout=layout)
    model = AcousticModel(cfg, 80, tok.vocab_size).to(device)
    frontend = FeatureExtractor(FeatureConfig(), SpecAugConfig()).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")  # as asr train
    scaler = loss_scaler(device, variant != "no-scaling"  # as asr train
                         and lstm_in_fp16(device, args.bf16 and device.type == "cuda"))
    # Each shard listed --repeat times: a pass as long as a corpus that many times bigger would give.
    data = ShardBatches(shards * args.repeat, args.max_frames, args.max_batch, args.num_buckets, args.max_duration, seed=0,
                        pad_to=args.pad_to if variant == "pad-to" else 1)
    data.label = Labeler(tok, FeatureConfig(), model.cfg.stride, data.pad_to)  # in the loader workers, as asr train
    cpus = worker_cpus(args.reserve_cores) if variant == "reserved-cores" and args.workers else None
    niceness = args.worker_niceness if args.worker_niceness is not None else (
        GPU_LOADER_NICENESS if device.type == "cuda" else 0)
    loader = DataLoader(data, batch_size=None, num_workers=args.workers, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if args.workers else None,
                        worker_init_fn=functools.partial(init_loader_worker, niceness=niceness, cpus=cpus))
    counters, shapes, step_times, waits, audio, padding = Counters(), [], [], [], [], []
    seen_shapes, new_shapes = set(), 0  # batch shapes of the steps so far; timed steps with a new one

    def stream() -> Iterator[dict]:
        """The loader's batches, pass after pass (a small shard set runs out)."""
        for epoch in itertools.count():
            data.set_epoch(epoch)
            empty = True
            for batch in loader:
                empty = False
                yield batch
            if empty:
                return

    preload, ctc = variant == "preloaded", "cudnn" if variant == "cudnn-ctc" else "torch"
    source = stream()
    if preload:  # every batch read first, then the loader's workers stopped: steps without them
        # (6 more for counting syncs and profiling, 10 spares: a batch with no usable utterance is not a
        # step). Pinned host memory: at max_frames 384,000 a batch is ~120 MB of 16-bit audio.
        batches = list(itertools.islice(source, args.warmup + args.steps + 16))
        source.close()
        source = iter(batches)
    if variant != "no-prefetch":
        source = prefetch_to_device(source, device)

    def train_step(batch: dict) -> dict | None:
        """asr train's step; like it, one read from the device (loss and gradient norm) a step."""
        # The named ranges split a profile (--profile) into the step's parts; they cost nothing unprofiled.
        with record_function("step 1: features, model, CTC loss"):
            out = compute_loss(model, frontend, batch, tok, device, args.bf16 and device.type == "cuda", counters, ctc)
        if out is None:
            return None
        loss, stats = out
        with record_function("step 2: backward"):
            scaler.scale(loss).backward()
        with record_function("step 3: gradient norm, read loss and norm"):
            scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            _, norm_v = torch.stack([loss.detach().float(), norm.float()]).tolist()
        with record_function("step 4: optimizer"):
            if math.isfinite(norm_v):  # (an overflow lowers the scale and skips the update, as in asr train)
                opt.step()
            scaler.update()
            opt.zero_grad(set_to_none=True)
        return stats

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step, events = 0, Counter()
    while step < args.warmup + args.steps:
        if step == args.warmup and not step_times:
            events = allocator_events(device)
        t0 = time.perf_counter()
        batch = next(source, None)
        if batch is None:
            raise SystemExit(f"train_throughput: the {'preloaded ' if preload else ''}batches ran out after "
                             f"{step} usable ones")
        t1 = time.perf_counter()
        stats = train_step(batch)
        if stats is None:
            continue
        t2 = time.perf_counter()
        if step >= args.warmup:
            step_times.append(t2 - t0)
            waits.append(t1 - t0)
            audio.append(stats["audio_s"])
            padding.append(stats["padding"])
            frames = batch["wav"].shape[1] // 160 + 1  # padded as the batch is: its longest, or --pad-to's
            shapes.append((stats["utts"], (frames + 3) // 4, stats["audio_s"]))
            new_shapes += tuple(batch["wav"].shape) not in seen_shapes
        seen_shapes.add(tuple(batch["wav"].shape))
        step += 1
    sync(device)
    step_times[-1] += time.perf_counter() - t2  # the last step's optimizer update, queued until now
    events = allocator_events(device) - events  # in the timed steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    name = f"{size} {layout}" + (f", {variant}" if variant != "train" else "")
    syncs = count_syncs(train_step, source, name, args.profile) if device.type == "cuda" else None
    # Profiled once per size and layout, in asr train's set-up: a profile's tables take longer than the row.
    profile = args.profile if variant == "train" else None
    busy = profile_steps(train_step, source, name, profile, device) if profile else None
    return {"busy": busy, "size": name, "layers": layers, "hidden": hidden, "x": sum(audio) / sum(step_times),
            "padding": statistics.mean(padding), "wait": sum(waits) / sum(step_times), "shapes": shapes,
            "step_ms": 1000 * statistics.median(step_times), "syncs": syncs, "peak_gib": peak, "events": events,
            "new_shapes": new_shapes, "expandable": expandable_in_use(device)}


def count_syncs(train_step, batches, size: str, path: str | None, steps: int = 3) -> float:
    """Host-device synchronisations per training step on a GPU (CUDA's sync debug mode warns at each);
    where they come from is appended to ``path``, if given."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            done = 0
            for batch in batches:
                done += train_step(batch) is not None
                if done == steps:
                    break
    finally:
        torch.cuda.set_sync_debug_mode("default")
    where = Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    if path:
        with open(path, "a") as f:
            f.write(f"## {size}: host-device synchronisations in {done} steps\n\n")
            f.writelines(f"{n:5d}  {loc}\n" for loc, n in where.most_common())
            f.write("\n")
    return sum(where.values()) / max(done, 1)


def profile_steps(train_step, batches, size: str, path: str, device: torch.device, steps: int = 3) -> float | None:
    """Append the top operators of ``steps`` profiled training steps to ``path``; returns the share of
    their wall time in which the GPU was busy (None on the CPU)."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        done = 0
        for batch in batches:
            done += train_step(batch) is not None
            if done == steps:
                break
        sync(device)
    return write_profile(prof, f"{size}: {done} steps", path, device)


def write_profile(prof, title: str, path: str, device: torch.device) -> float | None:
    key = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    busy = gpu_busy(prof.events()) if device.type == "cuda" else None
    with open(path, "a") as f:
        f.write(f"## {title}, sorted by {key}\n\n")
        if busy is not None:
            f.write(f"GPU busy {busy[0]:.0f} ms of {busy[1]:.0f} ms ({100 * busy[0] / busy[1]:.0f}%)\n\n")
        f.write(prof.key_averages().table(sort_by=key, row_limit=45) + "\n\n")
        f.write(f"### {title}, sorted by self_cpu_time_total (the host's own time)\n\n")
        f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25) + "\n\n")
    return None if busy is None else busy[0] / busy[1]


def gpu_busy(events) -> tuple[float, float]:
    """(ms in which the GPU ran at least one kernel or copy, ms from the first event to the last)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    busy, end = 0.0, float("-inf")
    for start, stop in spans:  # the union of the intervals: kernels on several streams overlap
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    first = min(e.time_range.start for e in events)
    last = max(e.time_range.end for e in events)
    return busy / 1000, max(last - first, 1e-3) / 1000


def run_bare(res: dict, args, device: torch.device) -> float:
    """Bare nn.LSTM (same layers/width, bidirectional) fwd+bwd over the recorded (B, T') shapes."""
    lstm = torch.nn.LSTM(res["hidden"], res["hidden"], res["layers"], bidirectional=True, batch_first=True).to(device)
    use_bf16 = args.bf16 and device.type == "cuda"
    total_t, total_audio = 0.0, 0.0
    for i, (b, t, audio_s) in enumerate(res["shapes"][:1] * 2 + res["shapes"]):
        x = torch.randn(b, t, res["hidden"], device=device, requires_grad=True)
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            y, _ = lstm(x)
        y.float().sum().backward()
        sync(device)
        if i >= 2:  # the first two are warm-up
            total_t += time.perf_counter() - t0
            total_audio += audio_s
    if args.profile and res["busy"] is not None and device.type == "cuda":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            for b, t, _ in res["shapes"][:3]:
                x = torch.randn(b, t, res["hidden"], device=device, requires_grad=True)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    y, _ = lstm(x)
                y.float().sum().backward()
            sync(device)
        res["bare_busy"] = write_profile(prof, f"{res['size']}: bare nn.LSTM, 3 steps", args.profile, device)
    return total_audio / total_t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--sizes", nargs="+", default=["2x128", "3x256"], help="LAYERSxHIDDEN per direction")
    p.add_argument("--lstm-layouts", nargs="+", default=[ModelConfig.lstm_layout], choices=["padded", "packed", "split"],
                   help="model.lstm_layout values to run, one row each (the bare LSTM is timed at each row's shapes)")
    p.add_argument("--variants", nargs="+", default=["train"], choices=VARIANTS,
                   help="a row each: train (asr train's set-up), or it with one change: preloaded (batches read "
                        "first, loader workers stopped), cudnn-ctc (cuDNN's CTC loss), no-prefetch (each batch "
                        "copied to the GPU at its step's start), reserved-cores (--reserve-cores physical cores "
                        "kept free of loader workers), pad-to (batches padded to a multiple of --pad-to frames), "
                        "classic-alloc (the CUDA allocator without expandable segments), no-scaling (no loss "
                        "scaling: what the scaler costs a step), all-threads (the training process on torch's "
                        "default CPU threads, not asr train's)")
    p.add_argument("--reserve-cores", type=int, default=2, help="for the reserved-cores variant (default 2: the "
                   "training process's thread and autograd's, which launch the kernels)")
    p.add_argument("--repeat", type=int, default=1,
                   help="list each shard this many times, so that a pass over them is that many times longer, as "
                        "over a bigger corpus: each pass starts every loader worker with a small batch, ends it with "
                        "its buckets' leftovers and restarts the workers, which a small shard set makes a large share "
                        "of the steps (with 12 workers and max_frames 384,000, 60 h of shards is 7 batches a worker)")
    p.add_argument("--pad-to", type=int, default=64, help="for the pad-to variant: pad each batch to a multiple of "
                   "this many frames (default 64: 0.64 s, 16 output frames at stride 4)")
    p.add_argument("--worker-niceness", type=int, default=None,
                   help="the loader workers' niceness (default: asr train's, 10 on a GPU, 0 on the CPU)")
    p.add_argument("--tokenizer", default="sentencepiece", choices=["sentencepiece", "char"],
                   help="the CTC units: sentencepiece (conf/large.yaml's: 256 unigram units fitted on the shards' "
                        "first 3,000 transcripts) or char")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-frames", type=int, default=20000)
    p.add_argument("--max-batch", type=int, default=512)
    p.add_argument("--max-duration", type=float, default=30.0)
    p.add_argument("--num-buckets", type=int, default=40, help="length buckets (default 40, conf/large.yaml's "
                   "since the eighteenth session; 20 before it, 10 before the fifteenth, with more padding)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--threads", type=int, default=0, help="the training process's torch CPU threads (default: "
                   "as asr train, 1 on a GPU and torch's default on the CPU)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="turn cudnn.benchmark on (asr train leaves it off: shapes change every step)")
    p.add_argument("--profile", help="also profile 3 steps of each size's train variant (and of the bare LSTM "
                   "at its shapes); write the top kernels here. Time in a run without it: on an H200 every row "
                   "timed after a profile in the same process ran ~15%% slower, the bare LSTM's too")
    args = p.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    args.all_threads = torch.get_num_threads()
    args.threads = process_threads(device, args.threads) or args.all_threads
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    shards = resolve_shards(args.shards)
    tok = tokenizer(args.tokenizer, shards)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; bf16: {args.bf16 and device.type == 'cuda'}; max_frames {args.max_frames}; "
          f"{args.threads} CPU thread(s) for the training process; "
          f"{args.steps} timed steps after {args.warmup} warm-up; {args.workers} loader workers; "
          f"{len(shards)} shards{f' x {args.repeat} a pass' if args.repeat > 1 else ''}; "
          f"{args.tokenizer} units ({tok.vocab_size} with the blank); "
          f"torch {torch.__version__}" + (f", cuDNN {torch.backends.cudnn.version()}, cudnn.benchmark "
                                          f"{args.cudnn_benchmark}" if device.type == "cuda" else ""))
    print("| model, LSTM layout | median step (ms) | ours (x real time) | bare nn.LSTM fwd+bwd (x) | ours / bare | padding | data wait "
          "| syncs / step | peak GPU memory (GiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    # Layouts innermost: rows to compare sit next to each other (rows measured apart differed by up
    # to 80 ms on an H200 on the same batches).
    for size, variant, layout in itertools.product(args.sizes, args.variants, args.lstm_layouts):
        res = run_ours(size, layout, variant, shards, tok, args, device)
        bare = run_bare(res, args, device)
        print(f"| {res['size']} | {res['step_ms']:.0f} | {res['x']:.0f} | {bare:.0f} | {100 * res['x'] / bare:.0f}% | "
              f"{100 * res['padding']:.1f}% | {100 * res['wait']:.1f}% | "
              f"{'n/a' if res['syncs'] is None else format(res['syncs'], '.1f')} | "
              f"{'n/a' if res['peak_gib'] is None else format(res['peak_gib'], '.1f')} |", flush=True)
        print(f"{res['size']}: in the {args.steps} timed steps, {res['new_shapes']} batches of a shape not seen before"
              + "".join(f", {res['events'][k]} {what}" for k, what in ALLOCATOR_EVENTS.items()
                        if device.type == "cuda")
              + ("" if res["expandable"] is None else
                 f"; GPU memory in {'expandable' if res['expandable'] else 'fixed-size'} segments"), flush=True)
        if res["busy"] is not None:
            print(f"{res['size']}: GPU busy in 3 profiled steps: ours {100 * res['busy']:.0f}%, bare nn.LSTM "
                  f"{100 * res.get('bare_busy', float('nan')):.0f}% of the wall time", flush=True)


if __name__ == "__main__":
    main()
