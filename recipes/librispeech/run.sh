#!/usr/bin/env bash
# LibriSpeech: a local copy of the corpus -> manifests -> SentencePiece units -> shards -> the large
# BiLSTM-CTC (conf/librispeech.yaml) trained on every GPU present (torchrun) -> a word n-gram LM ->
# greedy and beam + LM decoding of each dev/test set -> a results table.
#
#   bash recipes/librispeech/run.sh LIBRISPEECH_ROOT [SUBSET ...] [options] [-- key=value ...]
#
# LIBRISPEECH_ROOT holds the subsets as unpacked from openslr.org/12 (e.g. LibriSpeech/), and the
# SUBSETs are any of train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean
# test-other (default: all of them that are there). train-* subsets are trained on; the first dev-*
# subset picks the best epoch; every dev-* and test-* subset is decoded.
#
# Options:
#   --stage N --stop-stage M   run stages N..M only (0 prepare, 1 units, 2 shards, 3 train, 4 lm,
#                              5 lm weights, 6 decode, 7 results)
#   --config FILE              training config (default conf/librispeech.yaml)
#   --ngpu N                   GPUs to train on (default: all that nvidia-smi lists; 0: the CPU)
#   --lm-text FILE             LM training text, one sentence a line (e.g. librispeech-lm-norm.txt);
#                              default: the training transcripts
#   --lm-arpa FILE             use this ARPA LM (.arpa or .arpa.gz) instead of building one
#   --lm-order N               n-gram order of the built LM (default 3)
#   --lm-prune "C2 C3 .."      drop n-grams of order 2, 3, .. seen at most C times (default: none)
#   --beam-size N              beam width (default 16)
#   --alpha A --beta B         LM weight and word bonus; default: tuned on the first dev set
#   --alphas LIST --betas LIST the grid tried there (comma-separated; default: asr lm tune's)
#   --resume                   continue training from exp/librispeech/ckpt/state.pt
#   --no-report                skip asr evaluate's report.md and plots (faster)
#   --max-per-shard N          utterances per training shard (default 2000)
#   --audio-format flac|wav    the shards' audio (default flac; wav: ~1.7x the disk, and a loader
#                              worker reads it several times faster: fewer CPU cores per GPU)
#   --decode-workers N         CPU processes for the beam search (default: the cores)
#   --data DIR --exp DIR       where data (manifests, units, shards, LM) and results go
#   --force                    rerun stages even if they finished with the same options
#   -h, --help                 this text
#   -- key=value ...           config overrides for every stage that reads the config (units, train)
#
# Each finished stage leaves $exp/.done.<stage> holding its options; it is skipped next time unless
# they changed, and rerunning a stage invalidates the stages after it.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/asr ] && export PATH="$PWD/.venv/bin:$PATH"

root=
subsets=()
config=conf/librispeech.yaml
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
lm_text=
lm_arpa=
lm_order=3
lm_prune=
beam_size=16
alpha=
beta=
alphas=
betas=
max_per_shard=2000
audio_format=flac
decode_workers=$(nproc)
resume=0
report=1
stage=0
stop_stage=100
force=0
data=data/librispeech
exp=exp/librispeech
overrides=()
all_subsets="train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other"

# usage, opt_value, whole_numbers, run_stage and tolerate_skips
source "recipes/lib.sh"

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$(opt_value "$@"); shift 2 ;;
    --stop-stage) stop_stage=$(opt_value "$@"); shift 2 ;;
    --config) config=$(opt_value "$@"); shift 2 ;;
    --ngpu) ngpu=$(opt_value "$@"); shift 2 ;;
    --lm-text) lm_text=$(opt_value "$@"); shift 2 ;;
    --lm-arpa) lm_arpa=$(opt_value "$@"); shift 2 ;;
    --lm-order) lm_order=$(opt_value "$@"); shift 2 ;;
    --beam-size) beam_size=$(opt_value "$@"); shift 2 ;;
    --lm-prune) lm_prune=$(opt_value "$@"); shift 2 ;;
    --alpha) alpha=$(opt_value "$@"); shift 2 ;;
    --beta) beta=$(opt_value "$@"); shift 2 ;;
    --alphas) alphas=$(opt_value "$@"); shift 2 ;;
    --betas) betas=$(opt_value "$@"); shift 2 ;;
    --max-per-shard) max_per_shard=$(opt_value "$@"); shift 2 ;;
    --audio-format) audio_format=$(opt_value "$@"); shift 2 ;;
    --decode-workers) decode_workers=$(opt_value "$@"); shift 2 ;;
    --resume) resume=1; shift ;;
    --no-report) report=0; shift ;;
    --data) data=$(opt_value "$@"); shift 2 ;;
    --exp) exp=$(opt_value "$@"); shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) usage recipes/librispeech/run.sh; exit 0 ;;
    --) shift; overrides+=("$@"); break ;;
    -*) option_error "unknown option $1 (--help lists them)" ;;
    *) if [ -z "$root" ]; then root=$1; else subsets+=("$1"); fi; shift ;;
  esac
done
whole_numbers --stage "$stage" --stop-stage "$stop_stage" --ngpu "$ngpu"
[ -n "$data" ] && [ -n "$exp" ] || option_error "--data and --exp need a folder"
case "$audio_format" in flac|wav) ;; *) option_error "--audio-format must be flac or wav, got '$audio_format'" ;; esac
if [ -z "$root" ] || [ ! -d "$root" ]; then
  echo "usage: $0 LIBRISPEECH_ROOT [SUBSET ...] [options] [-- key=value ...]  (root '${root}' is not a folder)" >&2
  exit 1
fi
if [ ${#subsets[@]} -eq 0 ]; then
  for s in $all_subsets; do [ -d "$root/$s" ] && subsets+=("$s"); done
fi
train_sets=() eval_sets=()
for s in "${subsets[@]}"; do
  [ -d "$root/$s" ] || { echo "$root/$s: no such subset folder" >&2; exit 1; }
  case "$s" in
    train-*) train_sets+=("$s") ;;
    dev-*|test-*) eval_sets+=("$s") ;;
    *) echo "$s: not a LibriSpeech subset name (train-*, dev-* or test-*)" >&2; exit 1 ;;
  esac
done
[ ${#train_sets[@]} -gt 0 ] || { echo "no train-* subset among: ${subsets[*]}" >&2; exit 1; }
dev_set=
for s in "${eval_sets[@]}"; do case "$s" in dev-*) dev_set=$s; break ;; esac; done
mkdir -p "$exp" "$data"
lm=${lm_arpa:-$data/lm/lm.arpa}
device=cpu beam=beam
[ "$ngpu" -gt 0 ] && device=cuda beam=beam-gpu

# One config value after the overrides, so the units stage and training agree on the tokenizer.
cfg() {
  python3 - "$config" "$1" "${overrides[@]}" <<'PY'
import sys
from asr.config import load_config
cfg = load_config(sys.argv[1], sys.argv[3:])
section, key = sys.argv[2].split(".")
print(getattr(getattr(cfg, section), key))
PY
}

stage0() {  # each subset -> data/librispeech/<subset>.jsonl; the training subsets together -> train.jsonl
  # In parallel: reading the audio headers of a subset is mostly waiting for the disk.
  local pids=() s
  for s in "${subsets[@]}"; do
    tolerate_skips asr prepare "$root/$s" -o "$data/$s.jsonl" > "$data/$s.prepare.log" 2>&1 &
    pids+=($!)
  done
  for s in "${!pids[@]}"; do
    wait "${pids[$s]}" || { echo "asr prepare ${subsets[$s]} failed:" >&2; cat "$data/${subsets[$s]}.prepare.log" >&2; return 1; }
    grep -v '%|' "$data/${subsets[$s]}.prepare.log" || true  # its summary and any skips, not the progress bar
  done
  for s in "${train_sets[@]}"; do cat "$data/$s.jsonl"; done > "$data/train.jsonl"
}
stage1() {  # SentencePiece units trained on the training transcripts -> data/librispeech/lang/units.model
  mkdir -p "$data/lang"
  python3 - "$data/train.jsonl" "$data/lang" "$(cfg tokenizer.vocab_size)" "$(cfg tokenizer.model_type)" <<'PY'
import json, sys
from pathlib import Path
from asr.text import build_tokenizer
manifest, out, vocab, model_type = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
texts = [json.loads(line)["text"] for line in manifest.open() if line.strip()]
tok = build_tokenizer("sentencepiece", texts, vocab, model_type)
(out / "units.model").write_bytes(tok.model_proto)
(out / "units.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(tok.tokens)))
print(f"{out}/units.model: {tok.vocab_size} units (blank included) from {len(texts)} transcripts")
PY
}
stage2() {  # training manifest -> webdataset shards (dev/test sets stay manifests: asr evaluate reads them)
  # Shuffled: the manifest is sorted by speaker, and training mixes only within its shuffle buffer.
  tolerate_skips asr shard "$data/train.jsonl" -o "$data/shards" --split train --max-per-shard "$max_per_shard" \
    --audio-format "$audio_format" --shuffle 0
}
stage3() {  # train; the best model on the first dev set is $exp/model.pt
  local args=(--config "$config" --train "$data/shards/train.index.json" --exp "$exp")
  [ -n "$dev_set" ] && args+=(--dev "$data/$dev_set.jsonl")
  if [ "$resume" = 1 ]; then args+=(--resume); else rm -rf "$exp/ckpt" "$exp/train_log.jsonl" "$exp/model.pt"; fi
  args+=(tokenizer.model="$data/lang/units.model" "${overrides[@]}")
  if [ "$ngpu" -gt 0 ]; then
    # One process per GPU; with --nproc_per_node=1 this is a plain single-GPU run.
    torchrun --standalone --nproc_per_node="$ngpu" -m asr train --device cuda "${args[@]}"
  else
    tolerate_skips asr train --device cpu "${args[@]}"
  fi
}
stage4() {  # word n-gram LM built from --lm-text, or from the training transcripts (unless --lm-arpa)
  if [ -n "$lm_arpa" ]; then
    echo "using the given LM $lm_arpa"
    return 0
  fi
  mkdir -p "$data/lm"
  local text=${lm_text:-$data/train.jsonl} args=() s
  # shellcheck disable=SC2206
  # asr lm build's first threshold is the unigrams', which are never pruned.
  [ -n "$lm_prune" ] && args+=(--prune 0 $lm_prune)
  # Sentences that also occur in a dev/test set are left out, or the LM would partly memorise them.
  [ ${#eval_sets[@]} -gt 0 ] && args+=(--exclude) && for s in "${eval_sets[@]}"; do args+=("$data/$s.jsonl"); done
  asr lm build "$text" -o "$data/lm/lm.arpa" --order "$lm_order" "${args[@]}"
}
stage5() {  # LM weight and word bonus: the best of a grid on the first dev set (model run once)
  rm -f "$exp/decode/lm_tune.json"
  if [ -n "$alpha" ] && [ -n "$beta" ]; then echo "given: alpha $alpha beta $beta"; return 0; fi
  if [ -z "$dev_set" ]; then echo "no dev set to tune on: asr evaluate's defaults"; return 0; fi
  local args=()
  [ -n "$alphas" ] && args+=(--alphas "$alphas")
  [ -n "$betas" ] && args+=(--betas "$betas")
  asr lm tune --lm "$lm" --model "$exp/model.pt" --manifest "$data/$dev_set.jsonl" \
    --emissions "$exp/decode/$dev_set.emissions.pt" --decoder "$beam" --beam-size "$beam_size" --device "$device" \
    --decode-workers "$decode_workers" -o "$exp/decode/lm_tune.json" "${args[@]}"
}
stage6() {  # each dev/test set: greedy, and beam search with the LM
  local extra=() weights=()
  [ "$report" = 1 ] || extra+=(--no-report)
  if [ -f "$exp/decode/lm_tune.json" ]; then
    read -r a b < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["alpha"], r["beta"])' \
      "$exp/decode/lm_tune.json")
    weights=(--alpha "$a" --beta "$b")
  fi
  [ -n "$alpha" ] && weights+=(--alpha "$alpha")
  [ -n "$beta" ] && weights+=(--beta "$beta")
  for s in "${eval_sets[@]}"; do
    tolerate_skips asr evaluate "$exp/model.pt" "$data/$s.jsonl" --decoder greedy --device "$device" \
      --out "$exp/decode/$s-greedy" "${extra[@]}"
    tolerate_skips asr evaluate "$exp/model.pt" "$data/$s.jsonl" --decoder "$beam" --device "$device" \
      --lm "$lm" --beam-size "$beam_size" "${weights[@]}" --decode-workers "$decode_workers" \
      --out "$exp/decode/$s-beam-lm" "${extra[@]}"
  done
}
stage7() {  # results table per set -> $exp/results.md and $exp/results.json
  python3 - "$exp" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$*" "${eval_sets[@]}" <<'PY'
import json, sys
from pathlib import Path
exp, commit, command, sets = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
rows, by_set = [], {}
for s in sets:
    by_set[s] = {}
    for dec in ("greedy", "beam-lm"):
        f = exp / "decode" / f"{s}-{dec}" / "results.json"
        if f.is_file():
            by_set[s][dec] = r = json.loads(f.read_text())
            rows.append(f"| {s} | {dec} | {100 * r['wer']:.2f} | {100 * r['cer']:.2f} | {r['num_utts']} | "
                        f"{r['num_words']} | {r['rtfx']} |")
def read(name: str) -> dict:
    return json.loads((exp / name).read_text()) if (exp / name).is_file() else {}
train, tune = read("train_summary.json"), read("decode/lm_tune.json")
table = "\n".join(["| set | decoder | WER % | CER % | utts | words | x real time |",
                   "| --- | --- | --- | --- | --- | --- | --- |", *rows])
weights = f"LM weights tuned on {tune['manifest']}: alpha {tune['alpha']:g}, beta {tune['beta']:g}" if tune else ""
(exp / "results.md").write_text(f"# LibriSpeech results\n\ncommit {commit}; `{command}`\n\n{table}\n\n{weights}\n")
# The headline (DESIGN.md's results keys): test-clean if decoded, else the first set; beam + LM if run.
main = next((s for s in ("test-clean", *sets) if by_set.get(s)), None)
head = (by_set[main].get("beam-lm") or by_set[main]["greedy"]) if main else {}
keys = ("wer", "cer", "num_utts", "num_words", "decoder", "audio_seconds", "decode_seconds")
res = {**{k: head.get(k) for k in keys}, "set": main, "by_set": by_set, "train": train,
       "lm_weights": {k: tune[k] for k in ("alpha", "beta", "wer", "manifest")} if tune else None, "commit": commit,
       "command": command}
(exp / "results.json").write_text(json.dumps(res, indent=1) + "\n")
print(table)
PY
}

cmdline="bash recipes/librispeech/run.sh $root ${subsets[*]}"
run_stage 0 "data=$data root=$(realpath "$root") subsets=${subsets[*]}" stage0
run_stage 1 "data=$data vocab=$(cfg tokenizer.vocab_size) type=$(cfg tokenizer.model_type)" stage1
shard_opts="data=$data max_per_shard=$max_per_shard"
# The format joins stage 2's options only when it is not the default: shards made before
# --audio-format existed still count as done.
[ "$audio_format" = flac ] || shard_opts+=" audio_format=$audio_format"
run_stage 2 "$shard_opts" stage2
run_stage 3 "data=$data conf=$(cksum < "$config") ngpu=$ngpu dev=$dev_set ${overrides[*]}" stage3
run_stage 4 "data=$data arpa=$lm_arpa text=$lm_text order=$lm_order prune=$lm_prune sets=${eval_sets[*]}" stage4
run_stage 5 "data=$data beam=$beam_size alpha=$alpha beta=$beta grid=$alphas/$betas" stage5
run_stage 6 "data=$data sets=${eval_sets[*]} beam=$beam_size report=$report" stage6
run_stage 7 "-" stage7 "$cmdline ${overrides[*]}"
