"""The ``asr`` command: synth, prepare, shard, train, evaluate, adapt, transcribe, plot, export, lm.

Each subcommand reads files the previous stage wrote, so any stage can be rerun alone. A command
that had to skip bad input says how many and why, and exits with status 3; with ``--strict`` it
stops at the first bad input instead, exit status 2 (as for any other error).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from asr.argtypes import int_at_least, positive_float, positive_int
from asr.skipped import report_skipped

log = logging.getLogger("asr")


def cmd_synth(args: argparse.Namespace) -> int:
    from asr.data.synth import make_corpus

    problems = make_corpus(args.out, args.num_train, args.num_test, args.num_dev, text_files=args.text or None,
                           test_voices=args.test_voices or None, num_train_voices=args.train_voices,
                           seed=args.seed, jobs=args.jobs, use_flite=not args.no_flite)
    print(f"wrote synthetic corpus to {args.out}")
    return report_skipped(problems, "utterances")


def cmd_prepare(args: argparse.Namespace) -> int:
    from asr.data.manifest import write_manifest

    problems: list[str] = []
    if args.format == "fsdd":
        from asr.data.fsdd import FSDDError, PrepareOptions, prepare_fsdd

        opts = PrepareOptions(test_speakers=tuple(args.test_speakers), dev_speakers=tuple(args.dev_speakers),
                              connected_per_speaker=args.num_connected, eval_connected_per_speaker=args.num_eval_connected,
                              min_digits=args.min_digits, max_digits=args.max_digits, seed=args.seed)
        try:
            manifests = prepare_fsdd(args.root, args.output, opts, problems, strict=args.strict)
        except FSDDError as e:
            print(f"asr prepare: error: {e}", file=sys.stderr)
            return 2
        for name, utts in manifests.items():
            print(f"{args.output}/{name}.jsonl: {len(utts)} utterances, {sum(u.duration for u in utts) / 60:.1f} min")
        return report_skipped(problems, "recordings")
    from asr.data.librispeech import prepare_librispeech

    utts = prepare_librispeech(args.root, problems, strict=args.strict)
    n = write_manifest(args.output, utts)
    hours = sum(u.duration for u in utts) / 3600
    print(f"{args.output}: {n} utterances, {hours:.2f} h")
    return report_skipped(problems, "utterances")


def cmd_augment(args: argparse.Namespace) -> int:
    from asr.data.augment import AugmentOptions, augment_utterances, synth_digit_strings
    from asr.data.manifest import read_manifest, write_manifest

    problems: list[str] = []
    utts = read_manifest(args.manifest, problems=problems)
    opts = AugmentOptions(speeds=tuple(args.speeds), noise_prob=args.noise_prob, snr_db=(args.snr_min, args.snr_max),
                          seed=args.seed)
    out = augment_utterances(utts, Path(args.audio_dir) / "perturbed", opts, problems, jobs=args.jobs)
    if args.synth_digits:
        out += synth_digit_strings(args.synth_digits, Path(args.audio_dir) / "synth", args.synth_voices,
                                   seed=args.seed, band_limit_hz=args.band_limit, problems=problems, jobs=args.jobs)
    n = write_manifest(args.output, out)
    print(f"{args.output}: {n} utterances ({len(utts)} in), {sum(u.duration for u in out) / 60:.1f} min")
    return report_skipped(problems, "utterances")


def cmd_shard(args: argparse.Namespace) -> int:
    from asr.data.manifest import read_manifest
    from asr.data.shards import write_shards

    problems: list[str] = []
    utts = read_manifest(args.manifest, strict=args.strict, problems=problems)
    if args.shuffle is not None:
        # Training reads shards in order through a bounded shuffle buffer: a manifest sorted by
        # speaker or label would give batches of one speaker or one word.
        import random

        random.Random(args.shuffle).shuffle(utts)
    split = args.split or Path(args.manifest).name.split(".")[0]
    paths = write_shards(utts, args.output, split, args.max_per_shard, problems, strict=args.strict,
                         audio_format=args.audio_format)
    if not paths:
        report_skipped(problems, "utterances")
        print(f"asr shard: error: no utterance of {args.manifest} could be sharded", file=sys.stderr)
        return 2
    print(f"{args.output}: {len(paths)} shards of {split}")
    return report_skipped(problems, "utterances")


def cmd_train(args: argparse.Namespace) -> int:
    from asr.config import load_config
    from asr.data.manifest import read_manifest
    from asr.data.shards import resolve_shards
    from asr.train import TrainingError, train

    cfg = load_config(args.config, args.overrides)
    shards = resolve_shards(args.train)
    problems: list[str] = []
    dev = read_manifest(args.dev, strict=args.strict, problems=problems) if args.dev else []
    try:
        summary = train(cfg, shards, dev, args.exp, device=args.device, resume=args.resume, strict=args.strict,
                        dev_problems=problems)
    except TrainingError as e:
        print(f"asr train: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # torchrun takes any non-zero exit of a rank for a crash of the whole job (and exits 1), so
        # under torchrun rank 0 alone prints the summary and lists the skips (also in
        # train_summary.json), and the status stays 0. The other ranks' summaries lack the dev WER.
        if os.environ.get("RANK", "0") == "0":
            print(json.dumps(summary))
            report_skipped(summary["skipped"], "training or dev items")
        return 0
    print(json.dumps(summary))
    rc = report_skipped(summary["skipped"], "training or dev items")
    if "interrupted" in summary:  # the shell's status for a process ended by that signal
        import signal

        return 128 + signal.Signals[summary["interrupted"]].value
    return rc


def check_decoder_options(args: argparse.Namespace) -> None:
    """The decoder options' own mistakes, found before a manifest is read or a model loaded."""
    if args.decoder == "greedy" and args.lm:
        raise ValueError("the greedy decoder takes no LM; use --decoder beam (or beam-gpu) with an LM")
    if args.lm and not Path(args.lm).is_file():
        raise ValueError(f"{args.lm}: no such ARPA file")


def decoder_settings(args: argparse.Namespace) -> dict:
    """What decoded the output, for its records: the beam size, and the LM with its weights."""
    if args.decoder == "greedy":
        return {}
    out = {"beam_size": args.beam_size, "lm": args.lm}
    return {**out, "alpha": args.alpha, "beta": args.beta} if args.lm else out


def make_decoder(args: argparse.Namespace, tokenizer):
    if args.decoder == "greedy" and not args.lm:
        from asr.decode.greedy import GreedyDecoder

        return GreedyDecoder(tokenizer)
    from asr.decode import build_decoder

    return build_decoder(args.decoder, tokenizer, lm_path=args.lm, beam_size=args.beam_size, alpha=args.alpha,
                         beta=args.beta, device=args.device, num_workers=args.decode_workers)


def _device(name: str) -> str:
    """--device: auto picks the GPU when there is one; asking for one where there is none is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)")
    return name


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from asr.data.manifest import read_manifest
    from asr.evaluate import decode_utterances, write_results
    from asr.package import load_package
    from asr.recognizer import Recognizer

    check_decoder_options(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = _device(args.device)
    problems: list[str] = []
    utts = read_manifest(args.manifest, strict=args.strict, problems=problems)
    pkg = load_package(args.model)
    rec = Recognizer.from_package(pkg, args.device)
    decoder = make_decoder(args, rec.tokenizer)
    decoded = decode_utterances(rec, decoder, utts, max_frames=args.max_frames, num_workers=args.workers,
                                keep_log_probs=bool(args.save_emissions), strict=args.strict)
    decoded.problems[:0] = problems
    if not decoded.hyps:  # a WER over nothing would read 0.00%
        report_skipped(decoded.problems, "utterances")
        print(f"asr evaluate: error: no utterance of {args.manifest} could be decoded", file=sys.stderr)
        return 2
    out = Path(args.out or Path(args.model).parent / "decode" / Path(args.manifest).stem)
    res = write_results(out, utts, decoded, args.decoder, {"model": str(args.model), "manifest": str(args.manifest),
                                                            **decoder_settings(args)})
    if args.save_emissions:
        from asr.decode.emissions import save_emissions

        ids = [u.id for u in utts if u.id in decoded.log_probs]
        texts = {u.id: u.text for u in utts}
        save_emissions(args.save_emissions, ids, [decoded.log_probs[i] for i in ids], [texts[i] for i in ids],
                       rec.tokenizer.state(), decoded.audio_seconds, pkg.frame_shift)
    if not args.no_report:
        from asr.report import write_evaluation_report

        write_evaluation_report(out, utts, {k: h.text for k, h in decoded.hyps.items()},
                                title=f"{args.model} on {args.manifest} ({args.decoder})")
    print(f"WER {100 * res['wer']:.2f}%  (CER {100 * res['cer']:.2f}%, {res['num_utts']} utts, "
          f"{res['num_words']} words, {args.decoder}, {res['rtfx']}x real time) -> {out}/results.json")
    return report_skipped(decoded.problems, "utterances")


def cmd_transcribe(args: argparse.Namespace) -> int:
    import torch

    from asr.package import load_package
    from asr.recognizer import Recognizer
    from asr.transcribe import FORMATS, run

    formats = list(FORMATS) if args.output_format == "all" else [args.output_format]
    if len(formats) > 1 and not args.output_dir:
        print("asr transcribe: error: --output-format all needs --output-dir", file=sys.stderr)
        return 2
    check_decoder_options(args)
    if not 0 <= args.overlap < args.window:
        print(f"asr transcribe: error: --overlap {args.overlap:g} s must be at least 0 and less than --window "
              f"{args.window:g} s", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = "cpu" if args.quantize and args.device == "auto" else _device(args.device)
    pkg = load_package(args.model)
    rec = Recognizer.from_package(pkg, args.device)
    if args.quantize:
        if args.device != "cpu":
            print("asr transcribe: error: --quantize (INT8) runs on the CPU only; add --device cpu", file=sys.stderr)
            return 2
        from asr.export import quantize_model

        rec.model = quantize_model(rec.model)
    decoder = make_decoder(args, rec.tokenizer)
    meta = {"model": str(args.model), "decoder": args.decoder, **decoder_settings(args), "quantized": bool(args.quantize)}
    if args.same_speaker:
        if not pkg.features.speaker_cmn:
            print(f"asr transcribe: error: --same-speaker needs a model trained with features.speaker_cmn; "
                  f"{args.model} normalises each window by its own mean", file=sys.stderr)
            return 2
        from asr.transcribe import OneSpeaker, collect_inputs, pooled_mean_log_mel

        # its problems are reported by run() below
        files = collect_inputs(list(args.inputs), [], unique_keys=bool(args.output_dir))
        mean = pooled_mean_log_mel(rec, files, pkg.features.sample_rate, args.window, not args.no_progress)
        rec = OneSpeaker(rec, mean)
        meta["same_speaker"] = True
    summary = run(rec, decoder, args.inputs, output_dir=args.output_dir, formats=formats, overwrite=args.overwrite,
                  window=args.window, overlap=args.overlap, batch_size=args.batch_size,
                  sample_rate=pkg.features.sample_rate, frame_shift=pkg.frame_shift,
                  progress=not args.no_progress, meta=meta, strict=args.strict)
    if args.output_dir:
        print(f"{summary.transcribed} files ({summary.audio_seconds / 60:.1f} min of audio) transcribed to "
              f"{args.output_dir}" + (f"; {summary.already_done} already done" if summary.already_done else ""),
              file=sys.stderr)
    return report_skipped(summary.problems, "files")


def cmd_plot(args: argparse.Namespace) -> int:
    from asr.plot import plot_training, read_log

    logs = [read_log(p) for p in args.logs]
    first = Path(args.logs[0])
    out = Path(args.output) if args.output else (first if first.is_dir() else first.parent) / "train_curves.png"
    try:
        print(plot_training(logs, out))
    except ValueError as e:
        print(f"asr plot: error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from asr.export import export_package

    meta = export_package(args.model, args.output, quantize=args.quantize)
    print(f"{args.output}: model.ts ({'INT8' if meta['quantized'] else 'float32'}, {meta['vocab_size']} tokens, "
          f"{meta['sample_rate']} Hz), tokens.txt, export.json, transcribe.py "
          f"(try: python {Path(args.output) / 'transcribe.py'} {args.output} audio.wav)")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from asr.adapt import AdaptConfig, adapt, load_samples
    from asr.data.manifest import Utterance, read_manifest
    from asr.decode.beam import BeamSearchDecoder
    from asr.package import load_package, save_package
    from asr.recognizer import Recognizer

    if args.threads:
        torch.set_num_threads(args.threads)
    problems: list[str] = []
    if len(args.inputs) == 1 and args.inputs[0].endswith(".jsonl"):  # its texts, if any, are not used
        utts = read_manifest(args.inputs[0], problems=problems, need_text=False)
    else:  # untranscribed audio: one speaker, whatever the file names
        from asr.audio import audio_duration
        from asr.transcribe import collect_inputs

        utts = []
        for f in collect_inputs(list(args.inputs), problems):
            try:
                utts.append(Utterance(f.key, str(f.path), "", audio_duration(f.path), "target"))
            except Exception as e:  # noqa: BLE001 - any unreadable header: report the file, go on
                problems.append(str(e) if str(f.path) in str(e) else f"{f.path}: cannot read audio ({e})")
    long = [u for u in utts if u.duration > args.max_duration]
    problems += [f"{u.audio}: {u.duration:.1f} s is longer than --max-duration {args.max_duration:g} s" for u in long]
    utts = [u for u in utts if u.duration <= args.max_duration]
    source = [u for m in args.source or [] for u in read_manifest(m, problems=problems)]
    # A target clip among the labelled ones would teach the model the target's own texts.
    heard = {os.path.realpath(u.audio) for u in utts}
    mixed = [u for u in source if os.path.realpath(u.audio) in heard]
    if mixed:
        print(f"asr adapt: warning: {len(mixed)} --source clips are also target audio (e.g. {mixed[0].audio}); "
              "left out of the labelled clips", file=sys.stderr)
        source = [u for u in source if os.path.realpath(u.audio) not in heard]
    pkg = load_package(args.model)
    rec = Recognizer.from_package(pkg, _device(args.device))
    decoder = BeamSearchDecoder(rec.tokenizer, args.lm, beam_size=args.beam_size, alpha=args.alpha, beta=args.beta)
    given = {k: getattr(args, k) for k in ("rounds", "keep", "keep_step", "epochs", "lr", "source_utts")
             if getattr(args, k) is not None}
    if args.speeds is not None:
        given["speeds"] = tuple(args.speeds)
    cfg = dataclasses.replace(AdaptConfig(seed=args.seed), **given)
    if not args.source:
        cfg = dataclasses.replace(cfg, source_utts=0)
    target, bad = load_samples(utts, "target")
    problems += bad
    if not target:
        print("asr adapt: error: no readable target audio", file=sys.stderr)
        return 2
    import random

    source = random.Random(cfg.seed).sample(source, min(cfg.source_utts, len(source)))
    src, bad = load_samples(source, "source")
    problems += bad
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log.jsonl")
    log_path.unlink(missing_ok=True)
    records = adapt(rec, decoder, target, src, cfg, log_path)
    meta = dict(pkg.meta, adapted={"from": str(args.model), "config": dataclasses.asdict(cfg), "lm": args.lm,
                                   "alpha": args.alpha, "beta": args.beta, "target_utts": len(target),
                                   "rounds": records})
    save_package(out, rec.model, pkg.features, pkg.cmvn_mean, pkg.cmvn_std, rec.tokenizer, meta)
    last = records[-1]
    print(f"adapted on {len(target)} utterances ({last['pseudo_labelled']} pseudo-labelled in the last round, "
          f"{len(src)} labelled source utterances mixed in) -> {out} (log: {log_path})")
    return report_skipped(problems, "utterances")


def _decoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoder", default="greedy", choices=["greedy", "beam", "beam-gpu"])
    p.add_argument("--lm", help="ARPA n-gram LM for beam search")
    p.add_argument("--beam-size", type=positive_int, default=16)
    p.add_argument("--alpha", type=float, default=0.5, help="LM weight")
    p.add_argument("--beta", type=float, default=1.0, help="word insertion bonus")
    p.add_argument("--decode-workers", type=int, default=0, help="CPU processes for beam search")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="BiLSTM-CTC speech recognition")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="synthesize a LibriSpeech-layout corpus with espeak-ng and flite")
    p.add_argument("out")
    p.add_argument("--num-train", type=positive_int, default=3000)
    p.add_argument("--num-dev", type=int_at_least(0), default=100)
    p.add_argument("--num-test", type=positive_int, default=200)
    p.add_argument("--text", nargs="*", type=Path, help="text files to read (default: Debian's fortunes)")
    p.add_argument("--test-voices", nargs="*", help="e.g. espeak:en-us+m7 flite:rms (excluded from training)")
    p.add_argument("--train-voices", type=positive_int, default=60)
    p.add_argument("--no-flite", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=positive_int, default=2)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="corpus (LibriSpeech layout, or FSDD) -> manifest(s)")
    p.add_argument("root")
    p.add_argument("-o", "--output", required=True, help="manifest file (librispeech) or output folder (fsdd)")
    p.add_argument("--format", default="librispeech", choices=["librispeech", "fsdd"])
    g = p.add_argument_group("fsdd", "speaker-disjoint isolated and connected digits")
    g.add_argument("--test-speakers", nargs="+", default=["jackson"])
    g.add_argument("--dev-speakers", nargs="*", default=["nicolas"])
    g.add_argument("--num-connected", type=int, default=200, help="connected strings per training speaker")
    g.add_argument("--num-eval-connected", type=int, default=100, help="connected strings per dev/test speaker")
    g.add_argument("--min-digits", type=int, default=2)
    g.add_argument("--max-digits", type=int, default=7)
    g.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="stop at the first bad input (exit status 2)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("augment", help="training manifest -> speed-perturbed, noisy (and synthetic) copies")
    p.add_argument("manifest")
    p.add_argument("-o", "--output", required=True, help="output manifest (originals and copies)")
    p.add_argument("--audio-dir", required=True, help="folder for the written audio")
    p.add_argument("--speeds", nargs="+", type=positive_float, default=[0.9, 1.0, 1.1])
    p.add_argument("--noise-prob", type=float, default=0.0, help="probability that a copy gets additive noise")
    p.add_argument("--snr-min", type=float, default=5.0)
    p.add_argument("--snr-max", type=float, default=30.0)
    p.add_argument("--synth-digits", type=int, default=0, help="add this many espeak-ng/flite digit strings")
    p.add_argument("--synth-voices", type=positive_int, default=40)
    p.add_argument("--band-limit", type=int, default=4000, help="Hz; synthetic audio is low-passed here (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=positive_int, default=2)
    p.set_defaults(func=cmd_augment)

    p = sub.add_parser("shard", help="manifest -> webdataset shards")
    p.add_argument("manifest")
    p.add_argument("-o", "--output", required=True, help="shard folder")
    p.add_argument("--split", help="shard name prefix (default: the manifest's name)")
    p.add_argument("--max-per-shard", type=positive_int, default=1000)
    p.add_argument("--audio-format", choices=["flac", "wav"], default="flac",
                   help="flac (default): the smallest shards; wav: 1.4-1.8x the bytes, but a loader worker "
                        "reads it several times faster (FLAC decoding is most of its time), so a GPU needs "
                        "fewer CPU cores to keep it fed")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input (exit status 2)")
    p.add_argument("--shuffle", type=int, metavar="SEED",
                   help="write the utterances in a random order drawn with SEED (for training shards: a sorted "
                        "manifest otherwise streams batches of one speaker or one word)")
    p.set_defaults(func=cmd_shard)

    p = sub.add_parser("train", help="train a model from shards")
    p.add_argument("--config", help="YAML under conf/")
    p.add_argument("--train", nargs="+", required=True, help="shards: files, globs, brace patterns or SPLIT.index.json")
    p.add_argument("--dev", help="dev manifest, for WER after each epoch and the best model")
    p.add_argument("--exp", required=True, help="output folder")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input (exit status 2)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.lr=1e-3 model.layers=4")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="decode a manifest and print WER")
    p.add_argument("model")
    p.add_argument("manifest")
    p.add_argument("--out", help="output folder (default: next to the model, decode/<manifest>)")
    p.add_argument("--max-frames", type=positive_int, default=60000)
    p.add_argument("--workers", type=int, default=1, help="audio loading processes")
    p.add_argument("--save-emissions", help="also save log-probs here (for LM tuning and benchmarks)")
    p.add_argument("--no-report", action="store_true", help="skip report.md and its PNG plots")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input (exit status 2)")
    _decoder_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("transcribe", help="transcribe audio files, folders or lists of paths (txt/json/srt/vtt)")
    p.add_argument("--model", required=True)
    p.add_argument("inputs", nargs="+", help="audio files, folders (searched recursively) or .txt/.lst lists of paths")
    p.add_argument("-o", "--output-dir", help="write one output file per input and format here (default: stdout)")
    p.add_argument("-f", "--output-format", default="txt", choices=["txt", "json", "srt", "vtt", "all"])
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose outputs already exist")
    p.add_argument("--batch-size", type=positive_int, default=16, help="windows decoded together")
    p.add_argument("--window", type=float, default=30.0, help="seconds of audio per window for long files")
    p.add_argument("--overlap", type=float, default=4.0, help="seconds shared by consecutive windows; each seam is cut in a pause in it, away from both "
                        "windows' edges, so under ~2 s there is little room for a clean seam")
    p.add_argument("--quantize", action="store_true",
                   help="INT8 dynamic quantization of LSTM and linear layers (CPU); activations are scaled per "
                        "batch, so a file's words may change with the files beside it (--batch-size 1: never)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input (exit status 2)")
    p.add_argument("--same-speaker", action="store_true",
                   help="the inputs are all one speaker's: normalise them by their pooled mean log-mel "
                        "(models trained with features.speaker_cmn; without it, each window by its own)")
    _decoder_options(p)
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("adapt", help="unsupervised speaker adaptation: self-train a model on untranscribed audio")
    p.add_argument("model")
    p.add_argument("inputs", nargs="+", help="a manifest (.jsonl; its texts are not used) or audio files, "
                                             "folders or lists of paths, all of one speaker")
    p.add_argument("-o", "--output", required=True, help="the adapted model package")
    p.add_argument("--source", nargs="+", help="labelled manifests (one or more, e.g. the training and dev "
                                               "speakers); some of their clips are mixed into each epoch so "
                                               "that the model does not drift (recommended)")
    p.add_argument("--source-utts", type=int, default=None, help="labelled clips mixed in (300)")
    p.add_argument("--lm", help="ARPA n-gram LM for the beam search that makes the pseudo-transcripts")
    p.add_argument("--beam-size", type=positive_int, default=16)
    p.add_argument("--alpha", type=float, default=0.5, help="LM weight")
    p.add_argument("--beta", type=float, default=1.0, help="word insertion bonus")
    p.add_argument("--rounds", type=positive_int, default=None, help="decode + fine-tune rounds (4)")
    p.add_argument("--keep", type=float, default=None,
                   help="share of the utterances (most confident first) used as transcripts in round 1 (0.5)")
    p.add_argument("--keep-step", type=float, default=None, help="... growing by this each round (0.15)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning passes per round (5)")
    p.add_argument("--lr", type=float, default=None, help="(3e-4)")
    p.add_argument("--speeds", type=float, nargs="*", default=None,
                   help="the target is also heard at these speeds: clips whose hypotheses agree at more "
                        "of them are chosen first, and each is fine-tuned at one of its speeds "
                        "(0.9 0.95 1.05 1.1; none given: by margin alone, unperturbed)")
    p.add_argument("--max-duration", type=float, default=30.0, help="longer files are left out (seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("plot", help="training curves (loss, dev WER, learning rate) from train_log.jsonl -> PNG")
    p.add_argument("logs", nargs="+", help="train_log.jsonl files or experiment folders (several are overlaid)")
    p.add_argument("-o", "--output", help="PNG path (default: train_curves.png beside the first log)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("export", help="model package -> TorchScript (waveform in, log-probs out) + tokens.txt")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--quantize", action="store_true", help="INT8 dynamic quantization of LSTM and linear layers")
    p.set_defaults(func=cmd_export)

    try:
        from asr.lm.commands import add_lm_subparser
    except ImportError:
        pass
    else:
        add_lm_subparser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Config overrides (key=value) may come after options too: argparse alone only takes them in one run.
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = list(args.overrides or []) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from asr.data.synth import SynthesisError

    name = " ".join(filter(None, [args.command, getattr(args, "lm_command", None)]))
    try:
        return args.func(args)
    except (ValueError, OSError, SynthesisError) as e:
        # What users can cause (bad input, options, paths; the package's own errors are ValueErrors)
        # ends as one line naming the file or option; --verbose shows the traceback.
        if args.verbose:
            raise
        print(f"asr {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Outputs are written atomically, so what is done is kept: a rerun goes on from there.
        print(f"asr {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
