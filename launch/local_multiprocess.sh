#!/usr/bin/env bash
# Run N cooperating JAX processes on this machine (CPU or GPU), one log per process.
# See docs/LAUNCH.md. Example:
#   launch/local_multiprocess.sh -n 2 --devices-per-process 4 -- \
#     python -m cliffdistill.train --config configs/toy.py --workdir /tmp/run
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local_multiprocess.sh [options] [-- COMMAND [ARGS...]]

Starts N copies of COMMAND on this machine, wired together with cliffdistill.distributed
(CLIFFDISTILL_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID), waits for all of them, and exits
nonzero if any fails (the others are then stopped).

Options:
  -n, --num-processes N      number of processes (default 2)
  --devices-per-process K    CPU: K fake host devices per process (XLA_FLAGS);
                             GPU: K GPUs per process (CUDA_VISIBLE_DEVICES split) (default 1)
  --platform cpu|gpu|auto    auto = gpu when nvidia-smi lists a GPU, else cpu (default auto)
  --port P                   coordinator port on 127.0.0.1 (default: a free port)
  --log-dir DIR              per-process logs DIR/process-<i>.log (default logs/local)
  --python PY                python used to find a free port (default python3)
  --dry-run                  print the N commands and run nothing
  -h, --help                 this text

COMMAND defaults to the smoke test: python -m cliffdistill.distributed --check
EOF
}

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

num=2
per=1
platform=auto
port=""
log_dir=logs/local
python_bin=python3
dry_run=0
cmd=()

while [[ $# -gt 0 ]]; do
  case $1 in
    -n | --num-processes) num=${2:?$1 needs a value}; shift 2 ;;
    --devices-per-process) per=${2:?$1 needs a value}; shift 2 ;;
    --platform) platform=${2:?$1 needs a value}; shift 2 ;;
    --port) port=${2:?$1 needs a value}; shift 2 ;;
    --log-dir) log_dir=${2:?$1 needs a value}; shift 2 ;;
    --python) python_bin=${2:?$1 needs a value}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; cmd=("$@"); break ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ $num =~ ^[1-9][0-9]*$ ]] || die "-n must be a positive integer, got '$num'"
[[ $per =~ ^[1-9][0-9]*$ ]] || die "--devices-per-process must be a positive integer, got '$per'"
if [[ ${#cmd[@]} -eq 0 ]]; then
  cmd=(python -m cliffdistill.distributed --check)
fi

if [[ $platform == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    platform=gpu
  else
    platform=cpu
  fi
fi
[[ $platform == cpu || $platform == gpu ]] || die "--platform must be cpu, gpu or auto, got '$platform'"

gpus=()
if [[ $platform == gpu ]]; then
  if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    IFS=, read -r -a gpus <<<"$CUDA_VISIBLE_DEVICES"
  elif [[ $dry_run -eq 1 ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
    for ((g = 0; g < num * per; g++)); do gpus+=("$g"); done
  else
    mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ')
  fi
  ((${#gpus[@]} >= num * per)) ||
    die "need $((num * per)) GPUs (-n $num x --devices-per-process $per), found ${#gpus[@]}"
fi

if [[ -z $port ]]; then
  port=$("$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
    die "could not pick a free port (use --port)"
fi
[[ $port =~ ^[0-9]+$ ]] || die "--port must be a number, got '$port'"

# Keep the caller's XLA_FLAGS, minus any fake-device count (ours replaces it).
xla_base=""
for flag in ${XLA_FLAGS:-}; do
  [[ $flag == --xla_force_host_platform_device_count=* ]] && continue
  xla_base+="${xla_base:+ }$flag"
done

# One env-prefixed command per process.
declare -a lines
for ((i = 0; i < num; i++)); do
  envs=(
    "CLIFFDISTILL_COORDINATOR=127.0.0.1:$port"
    "CLIFFDISTILL_NUM_PROCESSES=$num"
    "CLIFFDISTILL_PROCESS_ID=$i"
  )
  if [[ $platform == cpu ]]; then
    envs+=("JAX_PLATFORMS=cpu" "XLA_FLAGS=${xla_base:+$xla_base }--xla_force_host_platform_device_count=$per")
  else
    ids=("${gpus[@]:i*per:per}")
    envs+=("CUDA_VISIBLE_DEVICES=$(IFS=,; printf '%s' "${ids[*]}")")
  fi
  lines[i]="env $(join_quoted "${envs[@]}") $(join_quoted "${cmd[@]}")"
done

if [[ $dry_run -eq 1 ]]; then
  for ((i = 0; i < num; i++)); do
    printf '%s > %s 2>&1\n' "${lines[i]}" "$(quote "$log_dir/process-$i.log")"
  done
  exit 0
fi

mkdir -p "$log_dir"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
}
trap 'cleanup; exit 130' INT TERM

for ((i = 0; i < num; i++)); do
  log="$log_dir/process-$i.log"
  printf '[local_multiprocess] process %d: %s > %s\n' "$i" "${lines[i]}" "$log" >&2
  bash -c "exec ${lines[i]}" >"$log" 2>&1 &
  pids+=("$!")
done

# Wait for all; on the first failure stop the rest (they would wait for the dead peer).
declare -a rcs
remaining=$num
first_failed=-1
while ((remaining > 0)); do
  for ((i = 0; i < num; i++)); do
    [[ -n ${rcs[i]:-} ]] && continue
    if ! kill -0 "${pids[i]}" 2>/dev/null; then
      rc=0
      wait "${pids[i]}" || rc=$?
      rcs[i]=$rc
      remaining=$((remaining - 1))
      if ((rc != 0 && first_failed < 0)); then
        first_failed=$i
        printf '[local_multiprocess] process %d exited with %d; stopping the others\n' "$i" "$rc" >&2
        cleanup
      fi
    fi
  done
  if ((remaining > 0)); then sleep 0.2; fi
done
trap - INT TERM

status=0
for ((i = 0; i < num; i++)); do
  log="$log_dir/process-$i.log"
  if ((rcs[i] != 0 && i != first_failed)); then
    status=1
    printf '[local_multiprocess] process %d stopped (exit %d); see %s\n' "$i" "${rcs[i]}" "$log" >&2
  elif ((rcs[i] != 0)); then
    status=1
    printf '[local_multiprocess] process %d FAILED (exit %d); last lines of %s:\n' "$i" "${rcs[i]}" "$log" >&2
    tail -n 20 "$log" >&2 || true
  else
    printf '[local_multiprocess] process %d ok (%s)\n' "$i" "$log" >&2
  fi
done
exit "$status"
