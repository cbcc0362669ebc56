# Shell helpers shared by the recipes; sourced from the repository root before a recipe parses its
# options. run_stage uses the recipe's globals: stage, stop_stage, exp, force.

# usage RECIPE: the recipe's header comment (from line 2 to the first line that is not a comment).
usage() {
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$1"
}

# option_error MESSAGE: a wrong command line is one line on stderr and exit status 2.
option_error() {
  echo "$0: $*" >&2
  exit 2
}

# opt_value "$@": the value of the option in $1, or an option error when it is the last argument.
# In the option loop: `--stage) stage=$(opt_value "$@"); shift 2 ;;` (set -e ends the recipe).
opt_value() {
  [ $# -ge 2 ] || option_error "option $1 needs a value"
  printf '%s' "$2"
}

# whole_numbers --opt VALUE ...: each VALUE must be a whole number >= 0. Called after the options
# are parsed, before any work: `[ abc -lt 3 ]` is an error that run_stage would take for "run it".
whole_numbers() {
  while [ $# -gt 0 ]; do
    [[ $2 =~ ^[0-9]+$ ]] || option_error "$1 must be a whole number >= 0, not '$2'"
    shift 2
  done
}

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
