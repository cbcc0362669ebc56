#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md in one run (7 min 4 s on one H200 on 2026-11-28 with
# six training rows, two of them profiled in the same process; the profile now runs in a process of
# its own, about a minute and a half more: give the device call its whole limit, 600 s; the short
# `asr train` run is last, so it is what a tight limit cuts):
#   1. LibriSpeech-length shards (11-17 s utterances) joined from a small source shard set, the same
#      utterances in each FORMATS shard audio format (default "wav"; "flac wav" adds FLAC's rows, ~3
#      minutes more);
#   1a. the tests that need a GPU (when pytest is importable);
#   1b. benchmarks/step_parts.py: the step built up part by part (where the gap to the bare LSTM
#       goes), on one fixed batch and on batches of a fresh shape each run (what a new shape costs),
#       at PARTS_BATCHES utterances of 13 s (default "295", the batches of max_frames 384,000;
#       "295 590" adds 768,000's);
#   2. benchmarks/train_throughput.py: the large model (5 x 1024, bf16) beside the bare cuDNN LSTM,
#      streaming each format's shards as asr train does; for the first format also VARIANTS, each one
#      change from that (preloaded batches, torch's CTC loss, cores reserved, batches padded to
#      multiples of 64 frames, the allocator without expandable segments);
#   3. the same at a second frame budget, EXTRA_FRAMES (e.g. 768000: twice the batch, so each of
#      cuDNN's per-time-step kernels has twice the work and the launches weigh half as much; peak
#      memory ~40 GiB; 63% of the bare LSTM on an H200; off by default), on the last format's
#      shards, run after the first format's rows and before the other formats';
#   3a. a profile of 5 steps of each layout and of the bare LSTM (GPU busy, top operators), in a
#       process of its own after the timed rows (PROFILE= skips it);
#   4. a short `asr train --config conf/large.yaml` on the GPU (its train_log.jsonl holds x real time);
#   5. benchmarks/decode.py: greedy, CPU beam and GPU beam search with the LM (when emissions are given).
# (cudnn.benchmark on/off was compared by running train_throughput.py with and without --cudnn-benchmark.)
# Each stage is time-limited and runs whatever the one before did; logs go to OUT.
#
#   bash benchmarks/gpu_check.sh SRC_SHARDS OUT [EMISSIONS LM TUNE]
# It needs the package's Python dependencies (soundfile, webdataset, jiwer, ...) importable and
# `asr` on PYTHONPATH; the H100 runs of 2026-11-27 installed them from carried wheels first.
# Smaller settings for a CPU dry run: DEVICE=cpu SIZES=2x64 HOURS=0.3 MAX_FRAMES=20000 EXTRA_FRAMES=40000 STEPS=3 ...
# BEFORE=DIR: also measure the training throughput of an older checkout (its asr/ and benchmarks/,
# e.g. `git archive COMMIT asr benchmarks | tar -x -C DIR`) on the same machine, just before ours.
# SMALL=1: also the 4 x 320 model.
# LAYOUTS: the model.lstm_layout values the benchmark runs (a row each, for each variant; default
# "padded split": the split layout runs each layer's shared frames in one bidirectional cuDNN call);
# VARIANTS: its rows for the first format (default "train all-threads cudnn-ctc": asr train's
# set-up, then the same with the training process on torch's default CPU threads (one per core);
# with cuDNN's CTC loss. Rows print as they finish, so a tight limit cuts the last ones.
# "classic-alloc" (the CUDA allocator's fixed-size segments instead of expandable ones), "preloaded"
# (the loader's workers stopped), "no-scaling" (no loss scaling; cost nothing on an H200), "pad-to"
# (batches padded to multiples of 64 frames: slower on an H200), "reserved-cores" (two physical
# cores kept free of workers) and "no-prefetch" (each batch copied at its own step's start;
# step_parts.py's last row prices that copy) are left out by default);
# REPEAT: train_throughput.py's --repeat (default 4: each shard listed 4 times, so a pass over the
# 60 h is as long as over 240 h; with 12 workers a pass over 60 h would be ~7 batches a worker, and
# each pass starts every worker with a small batch and ends it with its buckets' mixed leftovers).
# TRAIN_LAYOUT: the one `asr train` runs (default split: the newest path, run end to end on a GPU), TRAIN_FRAMES its max_frames (default
# MAX_FRAMES), TRAIN_FORMAT its shards' format (default the last of FORMATS). WARMUP: untimed steps first (default 15:
# each loader worker's first batch is an eighth of max_frames, and there are 12 workers).
set -u
src=$1 out=$2 emissions=${3:-} lm=${4:-} tune=${5:-}
device=${DEVICE:-cuda} sizes=${SIZES:-5x1024} hours=${HOURS:-60} max_frames=${MAX_FRAMES:-384000}
steps=${STEPS:-30} warmup=${WARMUP:-15} workers=${WORKERS:-12} layouts=${LAYOUTS:-padded split} train_minutes=${TRAIN_MINUTES:-1.2} work=${WORK:-/tmp/gpu_check}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$out" "$work"
stage() { echo "== $1 ($(date -u +%FT%TZ))"; }

stage "machine"
{ nvidia-smi -L 2>/dev/null; nproc; lscpu 2>/dev/null | grep -E "^(Model name|Thread|Core|Socket|NUMA node\(s\))"
  free -g | head -2; df -h /dev/shm | tail -1
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())"
} 2>&1 | tee "$out/machine.txt"

read -ra fmts <<< "${FORMATS:-wav}"
formats=${fmts[*]}
train_format=${TRAIN_FORMAT:-${fmts[-1]}}
stage "LibriSpeech-length shards"
for fmt in $formats; do  # the same utterances in each shard audio format
  timeout 120 $py benchmarks/long_shards.py --src "$src" --out "$work/long_$fmt" --hours "$hours" --audio-format "$fmt" 2>&1 \
      | tee -a "$out/long_shards.log"
done
long=$work/long_$train_format

if [ "$device" = cuda ] && $py -c "import pytest" 2>/dev/null; then
  stage "GPU tests"  # those of the training step that only run where there is a GPU (cuDNN's CTC loss, prefetch, the allocator's segments)
  timeout 120 $py -m pytest -q -p no:cacheprovider --continue-on-collection-errors tests/test_ctc_loss.py \
      tests/test_prefetch.py tests/test_gpu_memory.py tests/test_loss_scaling.py tests/test_model.py -k "gpu" 2>&1 | tail -60 | tee "$out/gpu_tests.txt"
fi

if [ "$device" = cuda ]; then
  stage "step parts"
  for b in ${PARTS_BATCHES:-295}; do
    timeout 150 $py benchmarks/step_parts.py --hidden 1024 --layers 5 --batch "$b" --seconds 13 --device cuda --bf16 \
        --shapes both --lstm-layout split --our-layouts padded split 2>&1 | tee -a "$out/step_parts.md"
  done
fi

if [ -n "${BEFORE:-}" ] && [ ! -d "$work/long_flac" ]; then
  echo "BEFORE needs flac among FORMATS (older checkouts read FLAC shards only); skipped"
elif [ -n "${BEFORE:-}" ]; then
  stage "training throughput, $BEFORE"
  (cd "$BEFORE" && PYTHONPATH="$BEFORE:${PYTHONPATH:-}" timeout 150 $py benchmarks/train_throughput.py \
      --shards "$work/long_flac/train.index.json" --sizes $sizes --steps "$steps" --warmup "$warmup" --max-frames "$max_frames" \
      --workers "$workers" --device "$device") 2>&1 | tee "$out/throughput_before.md"
fi

variants=${VARIANTS:-train all-threads cudnn-ctc}
repeat=${REPEAT:-4}
extra_frames=${EXTRA_FRAMES-}
throughput() {  # FORMAT: train_throughput.py on that format's shards at max_frames
  stage "training throughput, $1 shards"
  timeout 420 $py benchmarks/train_throughput.py --shards "$work/long_$1/train.index.json" --sizes $sizes \
      --lstm-layouts $layouts --variants $variants --steps "$steps" --warmup "$warmup" --max-frames "$max_frames" \
      --repeat "$repeat" --workers "$workers" --device "$device" 2>&1 | tee "$out/throughput_$1.md"
  variants=train  # the variants do not depend on the shards' format: once
}
throughput "${fmts[0]}"

# Before the other formats: a bigger batch may be what meets the bar, so it is measured before a
# tight device limit can cut it.
if [ -n "$extra_frames" ]; then
  stage "training throughput, max_frames $extra_frames"
  timeout 240 $py benchmarks/train_throughput.py --shards "$long/train.index.json" --sizes $sizes \
      --lstm-layouts $layouts --steps "$steps" --warmup "$warmup" --max-frames "$extra_frames" --repeat "$repeat" \
      --workers "$workers" --device "$device" 2>&1 | tee "$out/throughput_frames_$extra_frames.md"
fi

for fmt in "${fmts[@]:1}"; do
  throughput "$fmt"
done

# The profile in a process of its own, after the timed rows: every row timed after a profile in the
# same process ran slower (the bare LSTM's too: 16,100-17,500x against 19,500-20,400x on an H200).
if [ -n "${PROFILE-1}" ]; then
  stage "profile"
  timeout 150 $py benchmarks/train_throughput.py --shards "$long/train.index.json" --sizes $sizes --lstm-layouts $layouts \
      --steps 5 --warmup "$warmup" --max-frames "$max_frames" --repeat "$repeat" --workers "$workers" --device "$device" \
      --profile "$out/profile.txt" 2>&1 | tee "$out/throughput_profiled.md"
fi

stage "asr train, large config, $train_format shards"
rm -rf "$work/exp"
timeout 150 $py -m asr train --config conf/large.yaml --train "$long/train.index.json" --exp "$work/exp" \
    --device "$device" train.epochs=1 train.max_minutes="$train_minutes" train.log_every=5 \
    train.max_frames="${TRAIN_FRAMES:-$max_frames}" train.num_workers="$workers" model.lstm_layout="${TRAIN_LAYOUT:-split}" 2>&1 | tr '\r' '\n' | grep -v "batch/s," \
    | tail -40 | tee "$out/train.log"
cp "$work/exp/train_log.jsonl" "$out/" 2>/dev/null

[ "$device" = cuda ] && [ -n "${SMALL:-}" ] && timeout 180 $py benchmarks/train_throughput.py --shards "$long/train.index.json" \
    --sizes 4x320 --lstm-layouts $layouts --steps "$steps" --warmup "$warmup" --max-frames "$max_frames" --repeat "$repeat" \
    --workers "$workers" --device cuda 2>&1 \
    | tee "$out/throughput_4x320.md"

if [ -n "$emissions" ]; then
  stage "decoding"
  timeout 120 $py benchmarks/decode.py --emissions "$emissions" --lm "$lm" --tune "$tune" --beam-size 16 \
      --decoders greedy,beam,beam-gpu --device "$device" --repeats 3 2>&1 | tee "$out/decode.md"
fi
stage "done"
