# shellcheck shell=bash
# Shared helpers of the launch scripts (sourced, not run).

die() {
  printf '%s: %s\n' "${0##*/}" "$*" >&2
  exit 2
}

# Shell-quote one word only when needed (same rules as Python's shlex.quote).
quote() {
  local s=$1
  if [[ -n $s && $s != *[!A-Za-z0-9_@%+=:,./-]* ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\"\'\"\'}"
  fi
}

join_quoted() {
  local joined="" w
  for w in "$@"; do
    joined+="${joined:+ }$(quote "$w")"
  done
  printf '%s' "$joined"
}
