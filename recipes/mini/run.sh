#!/usr/bin/env bash
# The embedded default: synthetic speech (espeak-ng + flite reading Debian's fortunes) ->
# manifests -> shards -> a small BiLSTM-CTC trained on the CPU -> greedy (and beam + LM) WER
# on test voices and sentences never seen in training.
#
#   bash recipes/mini/run.sh [--stage N] [--stop-stage M] [--num-train N] [--train-voices V] [--epochs E] [--seed S]
#                            [--train-minutes M] [--beam-size K] [--jobs N] [--train-procs P]
#                            [-- CONFIG_OVERRIDES...]
#
# Writes data/mini/ (corpus, manifests, shards) and exp/mini/ (model.pt, results.json, logs).
# A stage that finished leaves exp/mini/.done.<stage> holding its options; it is skipped next time
# unless those options changed. --force reruns everything from --stage.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/asr ] && export PATH="$PWD/.venv/bin:$PATH"

stage=0
stop_stage=100
num_train=20000
train_voices=90
num_dev=100
num_test=200
epochs=40  # an upper bound: --train-minutes ends training (and paces the LR decay)
seed=0
jobs=$(nproc)
train_procs=0  # training processes (0: one per core, at most 4)
train_minutes=14
beam_size=16
force=0
data=data/mini
exp=exp/mini
overrides=()

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --num-train) num_train=$2; shift 2 ;;
    --train-voices) train_voices=$2; shift 2 ;;
    --num-dev) num_dev=$2; shift 2 ;;
    --num-test) num_test=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --train-minutes) train_minutes=$2; shift 2 ;;
    --beam-size) beam_size=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --train-procs) train_procs=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --force) force=1; shift ;;
    --) shift; overrides+=("$@"); break ;;   # the rest: config overrides for asr train
    *) echo "unknown option $1" >&2; exit 1 ;;
  esac
done
mkdir -p "$exp"
# More than a few processes would cut the 10,000-frame batch into slivers.
[ "$train_procs" -gt 0 ] || train_procs=$(( jobs < 4 ? jobs : 4 ))

# run_stage, tolerate_skips and cpu_train
source "recipes/lib.sh"

stage0() {  # synthesize the corpus (train voices; test voices and sentences unseen in training)
  rm -rf "$data/corpus"
  tolerate_skips asr synth "$data/corpus" --num-train "$num_train" --num-dev "$num_dev" --num-test "$num_test" \
    --train-voices "$train_voices" --seed "$seed" --jobs "$jobs"
}
stage1() {  # LibriSpeech-layout corpus -> manifests
  for split in train dev test; do tolerate_skips asr prepare "$data/corpus/$split" -o "$data/$split.jsonl"; done
}
stage2() {  # training manifest -> webdataset shards, in shuffled order: the manifest is sorted by
            # speaker and training mixes only within its shuffle buffer, so sorted shards would feed
            # the model a few voices at a time
  tolerate_skips asr shard "$data/train.jsonl" -o "$data/shards" --split train \
    --max-per-shard "$(shard_size "$(wc -l < "$data/train.jsonl")" "$train_procs" 500)" --shuffle "$seed"
}
stage3() {  # train on the CPU, one single-threaded process per core, batches of 10,000 frames
            # in all; the best dev-WER model is exp/mini/model.pt
  rm -rf "$exp/ckpt" "$exp/train_log.jsonl"
  tolerate_skips cpu_train "$train_procs" --config conf/mini.yaml --train "$data/shards/train.index.json" --dev "$data/dev.jsonl" \
    --exp "$exp" train.max_frames=$((10000 / train_procs)) train.epochs="$epochs" train.seed="$seed" train.max_minutes="$train_minutes" \
    "${overrides[@]}"
}
stage4() {  # greedy decoding of the test split; exp/mini/results.json
  tolerate_skips asr evaluate "$exp/model.pt" "$data/test.jsonl" --decoder greedy --device cpu --out "$exp/decode/test-greedy" \
    --save-emissions "$exp/decode/test.emissions.pt"
  cp "$exp/decode/test-greedy/results.json" "$exp/results.json"
}
stage5() {  # beam search + word 3-gram LM: LM from the corpus text (dev/test sentences left out),
            # weights tuned on dev, then the test split (exp/mini/results.json stays the greedy one)
  mkdir -p "$exp/lm"
  asr lm build "$data/corpus/lm_text.txt" -o "$exp/lm/lm.arpa" --order 3 --exclude "$data/dev.jsonl" "$data/test.jsonl"
  asr lm tune --lm "$exp/lm/lm.arpa" --model "$exp/model.pt" --manifest "$data/dev.jsonl" \
    --emissions "$exp/decode/dev.emissions.pt" --beam-size "$beam_size" --decode-workers "$jobs" --device cpu \
    -o "$exp/lm/tune.json"
  read -r a b < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["alpha"], r["beta"])' "$exp/lm/tune.json")
  tolerate_skips asr evaluate "$exp/model.pt" "$data/test.jsonl" --decoder beam --lm "$exp/lm/lm.arpa" --alpha "$a" --beta "$b" \
    --beam-size "$beam_size" --decode-workers "$jobs" --device cpu --out "$exp/decode/test-beam-lm"
}

run_stage 0 "n=$num_train/$num_dev/$num_test voices=$train_voices seed=$seed" stage0
run_stage 1 "n=$num_train/$num_dev/$num_test voices=$train_voices seed=$seed" stage1
run_stage 2 "n=$num_train seed=$seed procs=$train_procs" stage2
run_stage 3 "epochs=$epochs seed=$seed minutes=$train_minutes procs=$train_procs conf=$(cksum < conf/mini.yaml) ${overrides[*]}" stage3
run_stage 4 "greedy" stage4
run_stage 5 "beam=$beam_size" stage5

python3 - "$exp/decode" <<'PY'
import json, sys
from pathlib import Path
for name in ("test-greedy", "test-beam-lm"):
    f = Path(sys.argv[1]) / name / "results.json"
    if f.exists():
        r = json.loads(f.read_text())
        print(f"mini test set ({r['num_utts']} utts, unseen voices): WER {100 * r['wer']:.2f}%  CER {100 * r['cer']:.2f}%  [{name[5:]}]")
PY
