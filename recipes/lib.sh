# Shell helpers shared by the recipes; sourced after a recipe has parsed its options.
# Uses the recipe's globals: stage, stop_stage, exp, force.

# run_stage N "options" command...: skip when stage N already ran with the same options.
# A finished stage leaves $exp/.done.N holding its options.
run_stage() {
  local n=$1 opts=$2; shift 2
  [ "$n" -lt "$stage" ] || [ "$n" -gt "$stop_stage" ] && return 0
  local marker="$exp/.done.$n"
  if [ "$force" = 0 ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$opts" ]; then
    echo "== stage $n: done before with the same options, skipped"
    return 0
  fi
  echo "== stage $n: $*"
  rm -f "$marker"
  local t0; t0=$(date +%s)
  "$@"
  echo "$opts" > "$marker"
  echo "== stage $n took $(( $(date +%s) - t0 )) s"
  # A rerun stage invalidates the stages after it.
  for later in $(seq $((n + 1)) 9); do rm -f "$exp/.done.$later"; done
}

# asr commands exit 3 when they skipped bad input (named on stderr); a recipe goes on with the rest.
tolerate_skips() {
  local rc=0
  "$@" || rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || return "$rc"
}

# cpu_train NPROC ARGS...: `asr train ARGS` on the CPU as NPROC single-threaded data-parallel
# processes (torchrun, gloo). A CPU LSTM step gains little from a second thread, so two processes
# of one thread train about 1.4x faster than one process of two (benchmarks/RESULTS.md). Each
# process takes train.max_frames per batch: divide a global batch by NPROC.
cpu_train() {
  local n=$1; shift
  if [ "$n" -le 1 ]; then
    asr train --device cpu "$@" train.threads=1
  else
    torchrun --standalone --nproc_per_node="$n" -m asr train --device cpu "$@" train.threads=1
  fi
}

# shard_size NUM_UTTS PROCS MAX: utterances per shard so that each of PROCS training processes gets
# several shards (a process without one cannot train), at most MAX.
shard_size() {
  local n=$(( $1 / (4 * $2) ))
  [ "$n" -ge 1 ] || n=1
  [ "$n" -le "$3" ] || n=$3
  echo "$n"
}
