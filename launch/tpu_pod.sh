#!/usr/bin/env bash
# Create (if needed) a Cloud TPU VM slice, put the code on every worker, install, and run the
# same command on every worker. See docs/LAUNCH.md. Example:
#   launch/tpu_pod.sh --name cd-v5p --project my-proj --zone us-east5-a \
#     --accelerator-type v5p-16 --copy --workdir gs://my-bucket/runs/qwen
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --name NAME --zone ZONE --accelerator-type TYPE
                         (--repo GIT_URL [--branch BRANCH] | --copy) --workdir gs://...
                         [--project PROJECT] [--version RUNTIME] [--spot] [--env KEY=VALUE]...
                         [--jax-version V] [--detach] [--dry-run] [-- COMMAND [ARGS...]]

Steps (each one a gcloud command; --dry-run prints them all and runs nothing):
  1. gcloud compute tpus tpu-vm describe NAME; create the slice if it does not exist
  2. put the code in ~/cliffdistill on every worker: git clone/fetch (--repo) or scp a tarball
     of this checkout (--copy)
  3. pip install -r requirements.txt "jax[tpu]==<jax pin of requirements.txt>" on every worker
  4. run COMMAND on every worker (--worker=all); worker logs go to
     ~/cliffdistill/logs/NAME/worker-<hostname>.log on each worker

Options:
  --name NAME               TPU VM (slice) name
  --project PROJECT         GCP project (default: gcloud's configured project)
  --zone ZONE               zone, e.g. us-east5-a (v5p), us-east5-b (v6e)
  --accelerator-type TYPE   e.g. v5p-16, v6e-8, v5litepod-16, v4-32
  --version RUNTIME         TPU software version (default by generation: v6e v2-alpha-tpuv6e,
                            v5p v2-alpha-tpuv5, v5e/v5litepod v2-alpha-tpuv5-lite,
                            v4 and older tpu-ubuntu2204-base)
  --spot                    create the slice as Spot VMs
  --repo GIT_URL            clone this repository on every worker ...
  --branch BRANCH           ... at this branch (default main)
  --copy                    ... or copy this local checkout instead (no git access needed)
  --workdir gs://...        run directory (checkpoints, metrics); must be gs:// for multi-host
  --jax-version V           jax[tpu] version (default: the jax== pin in requirements.txt)
  --env KEY=VALUE           export KEY=VALUE before COMMAND on every worker (repeatable)
  --detach                  start COMMAND with nohup and return (survives a dropped ssh);
                            follow it in the worker logs
  --skip-create / --skip-setup  skip step 1 / steps 2-3 (slice and code already in place)
  --dry-run                 print every command, run nothing (gcloud not needed)
  -h, --help                this text

COMMAND defaults to:
  python3 -m cliffdistill.train --config configs/qwen_size.py --workdir WORKDIR
EOF
}

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dry_run=0
# Run a command, or print it (shell-quoted, one line) under --dry-run.
run() {
  if [[ $dry_run -eq 1 ]]; then
    join_quoted "$@"
    printf '\n'
  else
    printf '+ %s\n' "$(join_quoted "$@")" >&2
    "$@"
  fi
}

log() {
  printf '[tpu_pod] %s\n' "$*" >&2
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)

name=""
project=""
zone=""
accel=""
version=""
spot=0
repo=""
branch=main
copy=0
workdir=""
jax_version=""
detach=0
skip_create=0
skip_setup=0
envs=()
cmd=()

while [[ $# -gt 0 ]]; do
  case $1 in
    --name) name=${2:?$1 needs a value}; shift 2 ;;
    --project) project=${2:?$1 needs a value}; shift 2 ;;
    --zone) zone=${2:?$1 needs a value}; shift 2 ;;
    --accelerator-type) accel=${2:?$1 needs a value}; shift 2 ;;
    --version | --runtime-version) version=${2:?$1 needs a value}; shift 2 ;;
    --spot) spot=1; shift ;;
    --repo) repo=${2:?$1 needs a value}; shift 2 ;;
    --branch) branch=${2:?$1 needs a value}; shift 2 ;;
    --copy) copy=1; shift ;;
    --workdir) workdir=${2:?$1 needs a value}; shift 2 ;;
    --jax-version) jax_version=${2:?$1 needs a value}; shift 2 ;;
    --env) envs+=("${2:?$1 needs a value}"); shift 2 ;;
    --detach) detach=1; shift ;;
    --skip-create) skip_create=1; shift ;;
    --skip-setup) skip_setup=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; cmd=("$@"); break ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -n $name ]] || die "--name is required"
[[ -n $zone ]] || die "--zone is required"
[[ -n $accel ]] || die "--accelerator-type is required (e.g. v5p-16, v6e-8)"
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "--name must be lowercase letters, digits and '-', starting with a letter: '$name'"
if [[ $skip_setup -eq 0 ]]; then
  if [[ $copy -eq 1 && -n $repo ]]; then die "give --repo or --copy, not both"; fi
  if [[ $copy -eq 0 && -z $repo ]]; then die "give --repo GIT_URL or --copy"; fi
fi
if [[ ${#cmd[@]} -eq 0 ]]; then
  [[ -n $workdir ]] || die "--workdir is required (a gs:// path every worker can write)"
  cmd=(python3 -m cliffdistill.train --config configs/qwen_size.py --workdir "$workdir")
fi
if [[ -n $workdir && $workdir != gs://* ]]; then
  log "warning: --workdir '$workdir' is not gs://; every worker will write its own local copy"
fi
for kv in "${envs[@]}"; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env expects KEY=VALUE, got '$kv'"
done

if [[ -z $version ]]; then
  case $accel in
    v6e-*) version=v2-alpha-tpuv6e ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) version=v2-alpha-tpuv5-lite ;;
    v4-* | v3-* | v2-*) version="tpu-ubuntu2204-base" ;;
    *) die "no default TPU software version for '$accel'; pass --version" ;;
  esac
fi

if [[ -z $jax_version ]]; then
  jax_version=$(sed -n 's/^jax==\([^[:space:]#]*\).*/\1/p' "$repo_root/requirements.txt" | head -n 1)
  [[ -n $jax_version ]] || die "no 'jax==' pin in $repo_root/requirements.txt; pass --jax-version"
fi

loc=(--zone="$zone")
if [[ -n $project ]]; then loc+=(--project="$project"); fi
tpu=(gcloud compute tpus tpu-vm)
remote_dir=cliffdistill
logs="logs/$name"

ssh_all() {
  run "${tpu[@]}" ssh "$name" "${loc[@]}" --worker=all --command "$1"
}

# ---- 1. the slice -------------------------------------------------------------------------
if [[ $skip_create -eq 0 ]]; then
  create=("${tpu[@]}" create "$name" "${loc[@]}" --accelerator-type="$accel" --version="$version")
  if [[ $spot -eq 1 ]]; then create+=(--spot); fi
  if [[ $dry_run -eq 1 ]]; then
    run "${tpu[@]}" describe "$name" "${loc[@]}" --format 'value(state)'
    run "${create[@]}"
  else
    if state=$("${tpu[@]}" describe "$name" "${loc[@]}" --format 'value(state)' 2>/dev/null); then
      log "TPU '$name' exists (state: ${state:-unknown})"
      [[ $state == READY ]] ||
        die "TPU '$name' is $state, not READY (a preempted Spot slice must be deleted: gcloud compute tpus tpu-vm delete $name ${loc[*]})"
    else
      log "TPU '$name' not found: creating $accel ($version)"
      run "${create[@]}"
    fi
  fi
fi

# ---- 2. code on every worker, 3. install ----------------------------------------------------
if [[ $skip_setup -eq 0 ]]; then
  if [[ $copy -eq 1 ]]; then
    tarball="${TMPDIR:-/tmp}/cliffdistill-$name.tar.gz"
    # The checkout minus VCS data, caches, local run outputs and weights (see .gitignore).
    run tar -czf "$tarball" --exclude=.git --exclude=logs --exclude=__pycache__ --exclude=.venv \
      --exclude=.pytest_cache --exclude=.hypothesis --exclude=runs --exclude=checkpoints \
      --exclude=wandb --exclude='*.safetensors' -C "$repo_root" .
    run "${tpu[@]}" scp "$tarball" "$name:cliffdistill.tar.gz" "${loc[@]}" --worker=all
    ssh_all "rm -rf $remote_dir && mkdir -p $remote_dir && tar -xzf cliffdistill.tar.gz -C $remote_dir"
  else
    q_repo=$(quote "$repo")
    q_branch=$(quote "$branch")
    ssh_all "if [ -d $remote_dir/.git ]; then git -C $remote_dir fetch --depth=1 origin $q_branch && git -C $remote_dir checkout --force -B $q_branch FETCH_HEAD; else rm -rf $remote_dir && git clone --depth=1 --branch=$q_branch $q_repo $remote_dir; fi"
  fi
  ssh_all "cd $remote_dir && python3 -m pip install -r requirements.txt \"jax[tpu]==$jax_version\""
fi

# ---- 4. run on every worker -------------------------------------------------------------------
prefix=""
for kv in "${envs[@]}"; do
  prefix+="export ${kv%%=*}=$(quote "${kv#*=}") && "
done
user_cmd=$(join_quoted "${cmd[@]}")
worker_log="$logs/worker-\$(hostname).log"
if [[ $detach -eq 1 ]]; then
  inner="${prefix}exec $user_cmd"
  ssh_all "cd $remote_dir && mkdir -p $logs && nohup bash -c $(quote "$inner") > $worker_log 2>&1 < /dev/null &"
  if [[ $dry_run -eq 0 ]]; then
    log "started in the background; follow with:"
    log "  gcloud compute tpus tpu-vm ssh $name ${loc[*]} --worker=0 --command='tail -f $remote_dir/$logs/worker-*.log'"
  fi
else
  ssh_all "set -o pipefail && cd $remote_dir && mkdir -p $logs && ${prefix}$user_cmd 2>&1 | tee $worker_log"
fi
