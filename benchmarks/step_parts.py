"""The training step built up part by part, beside the bare cuDNN LSTM.

``train_throughput.py`` says how far a real step is from the bare ``nn.LSTM`` forward + backward at
the same shapes; this says which part of the step costs the difference. Each row adds one part to
the row above and is timed the same way (forward + backward, a sync after each run, the median of
``--repeats`` after two warm-up runs), without the loader's noise:

1. bare: a bidirectional ``nn.LSTM`` of the model's size over the model's LSTM input shape;
1a. the same weights one layer a call (``torch.lstm``, bidirectional, over the padded batch: not
   exact where utterances are shorter than the batch, so not a layout the model has): what calling
   cuDNN once a layer costs against once for all layers, the split layout's best case;
1b. our LSTM: the model's own LSTM layers alone, as each of ``--our-layouts`` runs them (padded: one
   direction of one layer a cuDNN call, each utterance reversed within its length; split: one
   bidirectional call a layer over the frames all utterances have, the rest one direction at a
   time), on that input; with row 2 it splits the model's gap to the bare LSTM between how the
   LSTM is run and the rest (subsampling, dropout, head, log-softmax);
2. model: the acoustic model (subsampling, BiLSTM in ``--lstm-layout``, head, log-softmax) on
   ready features, the summed log-probs as the loss;
3. + CTC loss: fp32 CTC on its log-probs instead, cuDNN's (``train.ctc=cudnn``: no waits) and torch's
   (its CUDA CTC copies its lengths to the GPU with a wait each time; asr train's default, used below);
4. + features: log-mels, CMVN and SpecAugment from 16-bit audio already on the device
   (``asr.train.compute_loss``, as ``asr train`` calls it);
5. + optimizer: the rest of the step (asr train's loss scaling on a GPU, gradient norm clipping, the
   one read of loss and norm, fused AdamW on a GPU);
6. + copies: the batch starting in pinned host memory, as the loader hands it over.

"bare / this" is the bare row's time over the row's: what ``train_throughput.py``'s "ours / bare" would
be if this part were all of the gap.

``--shapes fixed`` times every run on one batch; ``fresh`` gives each run a batch of a shape no run
before it had (about the same audio, the utterances' length and count changed), as the loader's
batches come in training, so that what a new shape costs (plans and descriptors made for it, memory
found for it) shows; ``both`` prints the two side by side. Fixed, a shape's first cost is among the
untimed runs.

    python benchmarks/step_parts.py --hidden 64 --layers 2 --batch 8 --seconds 4 --threads 2   # CPU
    python benchmarks/step_parts.py --hidden 1024 --layers 5 --batch 295 --seconds 13 --device cuda --bf16 \
        --shapes both
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time
from typing import Callable, Iterator

import torch

from asr.config import FeatureConfig, ModelConfig, SpecAugConfig
from asr.ctc_loss import ctc_loss
from asr.features import FeatureExtractor, frame_lengths, to_device
from asr.gpu_memory import set_expandable_segments
from asr.model import AcousticModel, subsampled_lengths
from asr.text import CharTokenizer
from asr.train import Counters, compute_loss, loss_scaler, lstm_in_fp16


def median_ms(run: Callable[[dict], None], inputs: Callable[[], dict], device: torch.device, repeats: int) -> float:
    """Median wall ms of ``run(inputs())`` followed by a device sync, after two untimed runs (the
    inputs are made before the clock starts)."""
    times = []
    for i in range(repeats + 2):
        inp = inputs()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        run(inp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def fresh_shapes(b: int, seconds: float) -> Iterator[tuple[int, float]]:
    """(batch, longest seconds) pairs, no two alike, each about ``b`` x ``seconds`` of audio: the
    longest utterance spread over 60-100% of ``seconds`` (by the golden ratio's multiples: never the
    same twice), the batch bigger as it is shorter."""
    for k in itertools.count(1):  # k = 0 would be the fixed batch's shape
        s = seconds * (1 - 0.4 * ((k * 0.6180339887) % 1))
        yield max(1, round(b * seconds / s)), s


def make_batch(b: int, seconds: float, vocab: int, stride: int, seed: int = 0, per_second: float = 8.0,
               device: torch.device = torch.device("cpu"), shortest: float = 0.92) -> dict:
    """A labelled batch as the loader's workers hand it over: ``b`` utterances of 16-bit noise,
    ``shortest``-100% of ``seconds`` long (the first exactly; 0.92 gives the padding, ~4%, and the
    frames past the shortest utterance, ~8%, of conf/large.yaml's 40-bucket batches of LibriSpeech-length
    speech: benchmarks/batch_shapes.py), with random CTC-feasible targets of ``per_second`` tokens a
    second (8: conf/large.yaml's SentencePiece units on LibriSpeech-length speech, ~90 in 12 s). The
    noise is drawn on ``device`` (quicker on a GPU) and handed over on the host."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * 16000)
    lengths = torch.randint(int(shortest * n), n + 1, (b,), generator=g)
    lengths[0] = n
    noise = torch.Generator(device).manual_seed(seed)
    wav = (torch.randn(b, n, generator=noise, device=device) * 3000).to(torch.int16)
    wav *= (torch.arange(n, device=device)[None, :] < lengths.to(device)[:, None]).to(torch.int16)
    wav = wav.cpu()
    cfg = FeatureConfig()
    frames = subsampled_lengths(frame_lengths(lengths, cfg), stride)
    tlen = torch.minimum((lengths.float() / 16000 * per_second).long(), frames // 2).clamp(min=1)
    targets = torch.randint(1, vocab, (int(tlen.sum()),), generator=g)
    return {"ids": [f"u{i}" for i in range(b)], "lengths": lengths, "wav": wav, "targets": targets,
            "target_lengths": tlen, "dropped": []}


def step_inputs(b: int, seconds: float, args, frontend: FeatureExtractor, device: torch.device, seed: int) -> dict:
    """What the rows start from: the batch on the host (``host``) and on ``device`` (``on_device``),
    its features and frame lengths (``feats``, ``flen``), and the bare LSTM's input (``x``)."""
    host = make_batch(b, seconds, args.vocab, args.stride, seed, device=device, shortest=args.shortest)
    if device.type == "cuda":  # as the loader hands batches over to a GPU
        host = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in host.items()}
    # Only the audio, as prefetch_to_device moves it: the CTC loss takes its targets and lengths on the host.
    on_device = {k: to_device(v, device) if k == "wav" else v for k, v in host.items()}
    with torch.no_grad():
        feats, _ = frontend(on_device["wav"], to_device(host["lengths"], device))
    flen = frame_lengths(host["lengths"], FeatureConfig()).clamp(max=feats.shape[1])
    x = torch.randn(b, int(subsampled_lengths(flen, args.stride).max()), args.hidden, device=device, requires_grad=True)
    return {"host": host, "on_device": on_device, "feats": feats, "flen": flen, "x": x}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--lstm-layout", default=ModelConfig.lstm_layout, choices=["padded", "packed", "split"],
                   help="the model's, in the rows from 'model' on")
    p.add_argument("--our-layouts", nargs="+", default=["padded", "split"], choices=["padded", "packed", "split"],
                   help="a row each of the LSTM layers alone in that layout")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8.0, help="the longest utterance; the others --shortest to 100%% of it")
    p.add_argument("--shortest", type=float, default=0.92,
                   help="the shortest utterance's share of the longest (0.92: like conf/large.yaml's 40-bucket batches; "
                        "0.8 before the eighteenth session, like 20 buckets' leftovers)")
    p.add_argument("--vocab", type=int, default=257, help="output units, the blank included (conf/large.yaml's: 257)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, as training on a GPU")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shapes", default="fixed", choices=["fixed", "fresh", "both"],
                   help="time every run on one batch, or each on a batch of a shape not seen before (as in "
                        "training), or both side by side")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    alloc = set_expandable_segments(True) if device.type == "cuda" else None  # as asr train sets the GPU up
    torch.manual_seed(0)
    tok = CharTokenizer()  # unused: the batch comes labelled, as the loader's workers hand it over
    cfg = ModelConfig(hidden=args.hidden, layers=args.layers, stride=args.stride, lstm_layout=args.lstm_layout)
    model = AcousticModel(cfg, 80, args.vocab).to(device).train()
    frontend = FeatureExtractor(FeatureConfig(), SpecAugConfig()).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type == "cuda")
    scaler = loss_scaler(device, lstm_in_fp16(device, args.bf16))  # as asr train
    fixed = step_inputs(args.batch, args.seconds, args, frontend, device, seed=0)
    counters = Counters()
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)  # noqa: E731
    bare = torch.nn.LSTM(args.hidden, args.hidden, args.layers, bidirectional=True, batch_first=True).to(device)

    def run_bare(inp: dict) -> None:
        with autocast():
            y, _ = bare(inp["x"])
        y.float().sum().backward()

    def run_layer_calls(inp: dict) -> None:
        x = inp["x"].transpose(0, 1)  # time-major, as the model's layers run
        with autocast():
            for k in range(args.layers):
                params = [getattr(bare, f"{n}_l{k}{d}") for d in ("", "_reverse")
                          for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                z = x.new_zeros(2, x.shape[1], args.hidden)
                x = torch.lstm(x, (z, z), params, True, 1, 0.0, True, True, False)[0]
        x.float().sum().backward()

    def run_our_lstm(inp: dict, layout: str) -> None:
        lengths = subsampled_lengths(inp["flen"], args.stride).clamp(max=inp["x"].shape[1])
        with autocast():
            if layout == "padded":
                y = model._lstm_padded(inp["x"], to_device(lengths, device))
            elif layout == "split":
                y = model._lstm_split(inp["x"], to_device(lengths, device), lengths)
            else:
                y = model._lstm_packed(inp["x"], lengths)
        y.float().sum().backward()

    def run_model(inp: dict, ctc: str | None) -> None:
        with autocast():
            log_probs, out_len = model(inp["feats"], inp["flen"])
        if ctc:
            lp = log_probs.float().transpose(0, 1)
            host = inp["host"]
            ctc_loss(lp, host["targets"], out_len, host["target_lengths"], ctc).backward()
        else:
            log_probs.sum().backward()

    def run_step(batch: dict, optimizer: bool) -> None:
        loss, _ = compute_loss(model, frontend, batch, tok, device, args.bf16, counters)
        scaler.scale(loss).backward()
        if optimizer:
            scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            torch.stack([loss.detach().float(), norm.float()]).tolist()
            opt.step()
            scaler.update()
            opt.zero_grad(set_to_none=True)

    rows = [("bare nn.LSTM, forward + backward", run_bare),
            ("the same, one layer a call (not exact for padding)", run_layer_calls),
            *[(f"our LSTM layers alone ({layout})", lambda inp, _l=layout: run_our_lstm(inp, _l))
              for layout in args.our_layouts],
            (f"model ({args.lstm_layout}), summed log-probs", lambda inp: run_model(inp, None)),
            ("+ CTC loss, cuDNN's where it fits", lambda inp: run_model(inp, "cudnn")),
            ("+ CTC loss, torch's (asr train's)", lambda inp: run_model(inp, "torch")),
            ("+ features and SpecAugment", lambda inp: run_step(inp["on_device"], False)),
            ("+ gradient norm, read, optimizer", lambda inp: run_step(inp["on_device"], True)),
            ("+ batch from pinned host memory", lambda inp: run_step(inp["host"], True))]
    modes = ["fixed", "fresh"] if args.shapes == "both" else [args.shapes]
    shapes = fresh_shapes(args.batch, args.seconds)  # one sequence for all rows: no row sees another's shapes
    made = itertools.count(1)
    sources = {"fixed": lambda: fixed,
               "fresh": lambda: step_inputs(*next(shapes), args, frontend, device, seed=next(made))}
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}; "
          f"{args.layers}x{args.hidden}; batch {args.batch} x {args.seconds:g} s, the others {100 * args.shortest:.0f}-100% of it "
          f"(LSTM input {tuple(fixed['x'].shape)}"
          f"{'; fresh shapes: about as much audio, the longest utterance 60-100% as long' if 'fresh' in modes else ''}); "
          f"bf16 {args.bf16}; torch {torch.__version__}" + (f"; CUDA allocator: {alloc}" if alloc else ""))
    heads = [("fixed batch" if m == "fixed" else "fresh shapes") for m in modes]
    print("| part | " + " | ".join(f"{h}: median ms | bare / this" for h in heads) + " |")
    print("| --- |" + " ---: | ---: |" * len(modes))
    base: dict[str, float] = {}
    for name, run in rows:
        cells = []
        for mode in modes:
            ms = median_ms(run, sources[mode], device, args.repeats)
            model.zero_grad(set_to_none=True)
            base.setdefault(mode, ms)
            cells.append(f"{ms:.2f} | {100 * base[mode] / ms:.0f}%")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
