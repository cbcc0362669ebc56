#!/usr/bin/env bash
# Connected digits from real speech: FSDD (five male speakers, 8 kHz) -> speaker-disjoint isolated
# and connected digit strings -> augmentation -> shards -> a small BiLSTM-CTC trained on the CPU ->
# greedy (and beam + digit LM) WER on the held-out test speaker, isolated and connected, and the same
# after unsupervised adaptation to that speaker (stage 6: asr adapt, which never reads its texts).
#
#   bash recipes/digits/run.sh [FSDD_DIR] [options] [-- CONFIG_OVERRIDES...]
#
# FSDD_DIR defaults to ../shared/data/fsdd (any folder of {digit}_{speaker}_{index}.wav works).
#
# Options:
#   --stage N --stop-stage M   run stages N..M only (0 prepare, 1 augment, 2 shards, 3 train, 4 greedy
#                              decoding, 5 beam search + LM, 6 adaptation to the test speaker)
#   --test-speaker S           the held-out test speaker (default jackson)
#   --dev-speaker S            the speaker that picks the best epoch and the LM weights (default nicolas)
#   --num-connected N          connected digit strings per training speaker (default 200)
#   --num-eval-connected N     connected digit strings per dev / test speaker (default 100)
#   --speeds "0.9 1.0 1.1"     speed-perturbed copies of the training clips
#   --noise-prob P             chance that a training copy gets noise added (default 0.3)
#   --synth N                  synthetic digit strings mixed into training (default 8000)
#   --synth-voices V           ... spoken in this many voices (default 90)
#   --epochs E                 at most this many epochs (default 12)
#   --train-minutes M          stop training after M minutes whatever the epoch (default 9)
#   --seed S                   split, augmentation, shuffling and training seed (default 0)
#   --beam-size K              beam width of stages 5 and 6 (default 16)
#   --adapt-rounds R           rounds of stage 6 (default 4; 0: no stage 6)
#   --adapt-speeds "0.9 0.95 1.05 1.1"  speeds stage 6 also hears the test speaker at ("": by margin alone)
#   --adapt-labelled "train dev"        labelled sets mixed into stage 6 ("": none)
#   --jobs N                   parallel jobs and decoding workers (default: the cores; training
#                              uses one process per core, at most 4)
#   --data DIR                 audio, manifests, shards (default data/digits)
#   --exp DIR                  model, logs, LM, decode/ and results.json (default exp/digits)
#   --force                    rerun stages even if they finished with the same options
#   -h, --help                 this text
#   -- key=value ...           config overrides for asr train
#
# A stage that finished leaves $exp/.done.<stage> holding its options; it is skipped next time
# unless those options changed, and rerunning a stage invalidates the stages after it. --force
# reruns everything from --stage.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/asr ] && export PATH="$PWD/.venv/bin:$PATH"

fsdd=../shared/data/fsdd
test_speaker=jackson
dev_speaker=nicolas
num_connected=200        # connected strings per training speaker
num_eval_connected=100   # connected strings per dev / test speaker
speeds="0.9 1.0 1.1"
noise_prob=0.3
synth=8000               # synthetic espeak-ng/flite digit strings mixed into training (measured: they help)
synth_voices=90          # ... in this many voices (4,000 in 40 -> 8,000 in 90: connected WER 18.5% -> 15.7%)
epochs=12
train_minutes=9          # stop training after this long whatever the epoch (the 15-minute budget)
beam_size=16
adapt_rounds=4           # stage 6: rounds of unsupervised adaptation to the test speaker (0: no stage 6)
adapt_speeds="0.9 0.95 1.05 1.1"  # ... hearing the speaker at these speeds too ("": by margin alone)
adapt_labelled="train dev"  # ... with labelled clips of these sets mixed in: the dev speaker is a fourth
                            # real voice once stages 3-5 have used it to choose (RESULTS.md)
seed=0
jobs=$(nproc)
stage=0
stop_stage=100
force=0
data=data/digits
exp=exp/digits
overrides=()

# usage, opt_value, whole_numbers, run_stage, tolerate_skips, cpu_train and shard_size
source "recipes/lib.sh"

while [ $# -gt 0 ]; do
  case "$1" in
    --test-speaker) test_speaker=$(opt_value "$@"); shift 2 ;;
    --dev-speaker) dev_speaker=$(opt_value "$@"); shift 2 ;;
    --num-connected) num_connected=$(opt_value "$@"); shift 2 ;;
    --num-eval-connected) num_eval_connected=$(opt_value "$@"); shift 2 ;;
    --speeds) speeds=$(opt_value "$@"); shift 2 ;;
    --noise-prob) noise_prob=$(opt_value "$@"); shift 2 ;;
    --synth) synth=$(opt_value "$@"); shift 2 ;;
    --synth-voices) synth_voices=$(opt_value "$@"); shift 2 ;;
    --epochs) epochs=$(opt_value "$@"); shift 2 ;;
    --train-minutes) train_minutes=$(opt_value "$@"); shift 2 ;;
    --seed) seed=$(opt_value "$@"); shift 2 ;;
    --beam-size) beam_size=$(opt_value "$@"); shift 2 ;;
    --adapt-rounds) adapt_rounds=$(opt_value "$@"); shift 2 ;;
    --adapt-speeds) adapt_speeds=$(opt_value "$@"); shift 2 ;;
    --adapt-labelled) adapt_labelled=$(opt_value "$@"); shift 2 ;;
    --jobs) jobs=$(opt_value "$@"); shift 2 ;;
    --stage) stage=$(opt_value "$@"); shift 2 ;;
    --stop-stage) stop_stage=$(opt_value "$@"); shift 2 ;;
    --data) data=$(opt_value "$@"); shift 2 ;;
    --exp) exp=$(opt_value "$@"); shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) usage recipes/digits/run.sh; exit 0 ;;
    --) shift; overrides+=("$@"); break ;;   # the rest: config overrides for asr train
    -*) option_error "unknown option $1 (--help lists them)" ;;
    *) fsdd=$1; shift ;;
  esac
done
whole_numbers --stage "$stage" --stop-stage "$stop_stage" --jobs "$jobs" --adapt-rounds "$adapt_rounds"
[ -n "$data" ] && [ -n "$exp" ] || option_error "--data and --exp need a folder"
mkdir -p "$exp"
t_start=$(date +%s)

stage0() {  # FSDD -> speaker-disjoint isolated + connected digits, 16 kHz FLAC, manifests
  rm -rf "$data/audio"
  tolerate_skips asr prepare --format fsdd "$fsdd" -o "$data" --test-speakers "$test_speaker" --dev-speakers "$dev_speaker" \
    --num-connected "$num_connected" --num-eval-connected "$num_eval_connected" --seed "$seed"
}
stage1() {  # training manifest -> speed-perturbed / noisy copies (+ synthetic digit strings)
  rm -rf "$data/aug"
  # shellcheck disable=SC2086
  tolerate_skips asr augment "$data/train.jsonl" -o "$data/train_aug.jsonl" --audio-dir "$data/aug" --speeds $speeds \
    --noise-prob "$noise_prob" --synth-digits "$synth" --synth-voices "$synth_voices" --seed "$seed" --jobs "$jobs"
}
train_procs() { echo $(( jobs < 4 ? jobs : 4 )); }  # training processes: one per core, at most 4
stage2() {  # training manifest -> webdataset shards
  # Shuffled: the manifest is sorted by speaker and digit, and training mixes only within its
  # shuffle buffer, so unshuffled shards give batches of one speaker saying one digit.
  tolerate_skips asr shard "$data/train_aug.jsonl" -o "$data/shards" --split train \
    --max-per-shard "$(shard_size "$(wc -l < "$data/train_aug.jsonl")" "$(train_procs)" 1000)" --shuffle "$seed"
}
stage3() {  # train on the CPU, one single-threaded process per core (at most 4), batches of
            # 12,000 frames in all; the best dev-WER model is $exp/model.pt
  rm -rf "$exp/ckpt" "$exp/train_log.jsonl" "$exp/model.pt"
  local procs; procs=$(train_procs)
  tolerate_skips cpu_train "$procs" --config conf/digits.yaml --train "$data/shards/train.index.json" --dev "$data/dev.jsonl" \
    --exp "$exp" train.max_frames=$((12000 / procs)) train.epochs="$epochs" train.seed="$seed" \
    train.max_minutes="$train_minutes" "${overrides[@]}"
}
stage4() {  # greedy decoding of the test speaker, isolated and connected
  for set in test_isolated test_connected; do
    tolerate_skips asr evaluate "$exp/model.pt" "$data/$set.jsonl" --decoder greedy --device cpu --threads 1 \
      --no-report --out "$exp/decode/$set"
  done
}
stage5() {  # beam search + a word 3-gram LM of the training transcripts (digit strings: it knows the
            # ten words and little else), weights tuned on the dev speaker, then the test speaker
  mkdir -p "$exp/lm"
  asr lm build "$data/train_aug.jsonl" -o "$exp/lm/lm.arpa" --order 3
  asr lm tune --lm "$exp/lm/lm.arpa" --model "$exp/model.pt" --manifest "$data/dev.jsonl" \
    --emissions "$exp/decode/dev.emissions.pt" --beam-size "$beam_size" --decode-workers "$jobs" --device cpu \
    --threads 1 -o "$exp/lm/tune.json"
  read -r a b < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["alpha"], r["beta"])' "$exp/lm/tune.json")
  for set in test_isolated test_connected; do
    tolerate_skips asr evaluate "$exp/model.pt" "$data/$set.jsonl" --decoder beam --lm "$exp/lm/lm.arpa" --alpha "$a" \
      --beta "$b" --beam-size "$beam_size" --decode-workers "$jobs" --device cpu --threads 1 --no-report \
      --out "$exp/decode/$set-beam-lm"
  done
}

stage6() {  # unsupervised adaptation to the test speaker: the model fine-tuned on its own confident
            # beam + LM transcripts of the speaker's audio (never its texts; confident: the same
            # at several speeds, then by margin), mixed with labelled clips of the training and dev
            # speakers, a few rounds; then scored like stage 5
  read -r a b < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["alpha"], r["beta"])' "$exp/lm/tune.json")
  local source=() set
  for set in $adapt_labelled; do source+=("$data/$set.jsonl"); done
  [ ${#source[@]} -eq 0 ] || source=(--source "${source[@]}")
  # shellcheck disable=SC2086  # $adapt_speeds: one argument per speed
  tolerate_skips asr adapt "$exp/model.pt" "$data/test.jsonl" -o "$exp/adapted/model.pt" "${source[@]}" \
    --lm "$exp/lm/lm.arpa" --alpha "$a" --beta "$b" --beam-size "$beam_size" --rounds "$adapt_rounds" --seed "$seed" \
    --speeds $adapt_speeds --device cpu --threads "$jobs"
  for set in test_isolated test_connected; do
    tolerate_skips asr evaluate "$exp/adapted/model.pt" "$data/$set.jsonl" --decoder beam --lm "$exp/lm/lm.arpa" --alpha "$a" \
      --beta "$b" --beam-size "$beam_size" --decode-workers "$jobs" --device cpu --threads 1 --no-report \
      --out "$exp/decode/$set-adapted"
  done
}

run_stage 0 "data=$data fsdd=$fsdd test=$test_speaker dev=$dev_speaker n=$num_connected/$num_eval_connected seed=$seed" stage0
run_stage 1 "data=$data speeds=$speeds noise=$noise_prob synth=$synth voices=$synth_voices seed=$seed" stage1
run_stage 2 "data=$data shuffle seed=$seed procs=$(train_procs)" stage2
run_stage 3 "data=$data epochs=$epochs seed=$seed minutes=$train_minutes jobs=$jobs conf=$(cksum < conf/digits.yaml) ${overrides[*]}" stage3
run_stage 4 "data=$data greedy" stage4
run_stage 5 "data=$data beam=$beam_size" stage5
if [ "$adapt_rounds" -gt 0 ]; then run_stage 6 "data=$data rounds=$adapt_rounds speeds=$adapt_speeds labelled=$adapt_labelled beam=$beam_size seed=$seed" stage6; fi

# results.json: the pooled test WER (isolated + connected) under the DESIGN.md keys, each set
# separately, the split, and what produced it.
if [ -f "$exp/decode/test_isolated/results.json" ] && [ -f "$exp/decode/test_connected/results.json" ]; then
  python3 - "$exp" "$data" "$(( $(date +%s) - t_start ))" "speeds=$speeds noise_prob=$noise_prob synth=$synth synth_voices=$synth_voices epochs=$epochs seed=$seed ${overrides[*]}" <<'PY'
import json, sys
from pathlib import Path
exp, data, wall, opts = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
iso = json.loads((exp / "decode/test_isolated/results.json").read_text())
con = json.loads((exp / "decode/test_connected/results.json").read_text())
split = json.loads((data / "split.json").read_text())
train = json.loads((exp / "train_summary.json").read_text()) if (exp / "train_summary.json").is_file() else {}
# Pooled over both sets from the hypotheses themselves, so CER is exact too.
from asr.data.manifest import read_manifest
from asr.metrics import score
refs, hyps = [], []
for name in ("test_isolated", "test_connected"):
    texts = {u.id: u.text for u in read_manifest(data / f"{name}.jsonl", check_audio=False)}
    for line in (exp / "decode" / name / "recogs.txt").read_text().splitlines():
        uid, _, hyp = line.partition("\t")
        refs.append(texts[uid])
        hyps.append(hyp)
pooled = score(refs, hyps)
res = {
    "wer": pooled.wer, "cer": pooled.cer, "num_utts": pooled.num_utts, "num_words": pooled.num_words,
    "decoder": iso["decoder"],
    "audio_seconds": round(iso["audio_seconds"] + con["audio_seconds"], 3),
    "decode_seconds": round(iso["decode_seconds"] + con["decode_seconds"], 3),
    "wer_isolated": iso["wer"], "wer_connected": con["wer"],
    "isolated": iso, "connected": con,
    "test_speakers": split["test"], "dev_speakers": split["dev"], "train_speakers": split["train"],
    "train_seconds": train.get("train_seconds"), "epochs": train.get("epochs"),
    "best_dev_wer": train.get("best_dev_wer"), "options": opts,
    "recipe_wall_seconds_this_run": wall,
}
for name in ("isolated", "connected"):  # stage 5, when it ran after this model
    f = exp / "decode" / f"test_{name}-beam-lm" / "results.json"
    if f.is_file() and f.stat().st_mtime >= (exp / "model.pt").stat().st_mtime:
        res[f"wer_{name}_beam_lm"] = json.loads(f.read_text())["wer"]
    f = exp / "decode" / f"test_{name}-adapted" / "results.json"  # stage 6
    if f.is_file() and f.stat().st_mtime >= (exp / "adapted" / "model.pt").stat().st_mtime:
        res[f"wer_{name}_adapted"] = json.loads(f.read_text())["wer"]
(exp / "results.json").write_text(json.dumps(res, indent=1) + "\n")
print(f"test speaker {', '.join(split['test'])}: isolated WER {100 * iso['wer']:.2f}% ({iso['num_words']} words), "
      f"connected WER {100 * con['wer']:.2f}% ({con['num_words']} words) [greedy] -> {exp}/results.json")
if "wer_isolated_beam_lm" in res and "wer_connected_beam_lm" in res:
    print(f"test speaker {', '.join(split['test'])}: isolated WER {100 * res['wer_isolated_beam_lm']:.2f}%, "
          f"connected WER {100 * res['wer_connected_beam_lm']:.2f}% [beam search + digit LM]")
if "wer_isolated_adapted" in res and "wer_connected_adapted" in res:
    print(f"test speaker {', '.join(split['test'])}: isolated WER {100 * res['wer_isolated_adapted']:.2f}%, "
          f"connected WER {100 * res['wer_connected_adapted']:.2f}% [beam search + digit LM, after unsupervised "
          f"adaptation to the speaker]")
PY
fi
echo "recipe wall time this run: $(( $(date +%s) - t_start )) s"
