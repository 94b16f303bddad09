#!/usr/bin/env bash
# The newcomer's first command: make this machine ready (redis-server, uv, locked
# dependencies), then run the whole gateway stack until Ctrl-C.
# Arguments go to `gateway dev` (e.g. --workers 4 --with-mock-downstream).
set -euo pipefail
cd "$(dirname "$0")/.."
./.ci/bootstrap
export PATH="$HOME/.local/bin:$PATH"
exec uv run --locked --python "$(./.ci/find-python)" gateway dev "$@"
