#!/usr/bin/env bash
# The embedded default: synthetic speech (espeak-ng + flite reading Debian's fortunes) ->
# manifests -> shards -> a small BiLSTM-CTC trained on the CPU -> greedy (and beam + LM) WER
# on test voices and sentences never seen in training.
#
#   bash recipes/mini/run.sh [options] [-- CONFIG_OVERRIDES...]
#
# Options:
#   --stage N --stop-stage M   run stages N..M only (0 synthesize, 1 manifests, 2 shards, 3 train,
#                              4 greedy decoding, 5 beam search + LM)
#   --num-train N              training utterances to synthesize (default 20000)
#   --num-dev N --num-test N   dev and test utterances (default 100 and 200)
#   --train-voices V           voices the training utterances are spoken in (default 90)
#   --epochs E                 at most this many epochs (default 40; --train-minutes ends training first)
#   --train-minutes M          stop training after M minutes (default 14), which also paces the LR decay
#   --seed S                   corpus, shuffling and training seed (default 0)
#   --beam-size K              beam width of stage 5 (default 16)
#   --jobs N                   parallel synthesis and decoding jobs (default: the cores)
#   --train-procs P            training processes (default 0: one per core, at most 4)
#   --data DIR                 corpus, manifests and shards (default data/mini)
#   --exp DIR                  model, logs and results (default exp/mini)
#   --force                    rerun stages even if they finished with the same options
#   -h, --help                 this text
#   -- key=value ...           config overrides for asr train (e.g. -- model.stride=2)
#
# Writes the --data folder (corpus, manifests, shards) and the --exp folder (model.pt, results.json,
# logs, decode/).
# A stage that finished leaves $exp/.done.<stage> holding its options; it is skipped next time
# unless those options changed, and rerunning a stage invalidates the stages after it. --force
# reruns everything from --stage.
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

# usage, opt_value, whole_numbers, run_stage, tolerate_skips, cpu_train and shard_size
source "recipes/lib.sh"

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$(opt_value "$@"); shift 2 ;;
    --stop-stage) stop_stage=$(opt_value "$@"); shift 2 ;;
    --num-train) num_train=$(opt_value "$@"); shift 2 ;;
    --train-voices) train_voices=$(opt_value "$@"); shift 2 ;;
    --num-dev) num_dev=$(opt_value "$@"); shift 2 ;;
    --num-test) num_test=$(opt_value "$@"); shift 2 ;;
    --epochs) epochs=$(opt_value "$@"); shift 2 ;;
    --seed) seed=$(opt_value "$@"); shift 2 ;;
    --train-minutes) train_minutes=$(opt_value "$@"); shift 2 ;;
    --beam-size) beam_size=$(opt_value "$@"); shift 2 ;;
    --jobs) jobs=$(opt_value "$@"); shift 2 ;;
    --train-procs) train_procs=$(opt_value "$@"); shift 2 ;;
    --data) data=$(opt_value "$@"); shift 2 ;;
    --exp) exp=$(opt_value "$@"); shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) usage recipes/mini/run.sh; exit 0 ;;
    --) shift; overrides+=("$@"); break ;;   # the rest: config overrides for asr train
    *) option_error "unknown option $1 (--help lists them)" ;;
  esac
done
whole_numbers --stage "$stage" --stop-stage "$stop_stage" --jobs "$jobs" --train-procs "$train_procs"
[ -n "$data" ] && [ -n "$exp" ] || option_error "--data and --exp need a folder"
mkdir -p "$exp"
# More than a few processes would cut the 10,000-frame batch into slivers.
[ "$train_procs" -gt 0 ] || train_procs=$(( jobs < 4 ? jobs : 4 ))

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

run_stage 0 "data=$data n=$num_train/$num_dev/$num_test voices=$train_voices seed=$seed" stage0
run_stage 1 "data=$data n=$num_train/$num_dev/$num_test voices=$train_voices seed=$seed" stage1
run_stage 2 "data=$data n=$num_train seed=$seed procs=$train_procs" stage2
run_stage 3 "data=$data epochs=$epochs seed=$seed minutes=$train_minutes procs=$train_procs conf=$(cksum < conf/mini.yaml) ${overrides[*]}" stage3
run_stage 4 "data=$data greedy" stage4
run_stage 5 "data=$data beam=$beam_size" stage5

python3 - "$exp/decode" <<'PY'
import json, sys
from pathlib import Path
for name in ("test-greedy", "test-beam-lm"):
    f = Path(sys.argv[1]) / name / "results.json"
    if f.exists():
        r = json.loads(f.read_text())
        print(f"mini test set ({r['num_utts']} utts, unseen voices): WER {100 * r['wer']:.2f}%  CER {100 * r['cer']:.2f}%  [{name[5:]}]")
PY
