# Sourced by the infra scripts: the checkout, the state folder and the interpreter they use.
# shellcheck shell=bash
repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
state_dir="${KOII_INFRA_DIR:-$repo/.koiitasks/infra}"

if [[ -n "${KOII_PYTHON:-}" ]]; then
    python="$KOII_PYTHON"
elif [[ -x "$repo/.venv/bin/python" ]]; then
    python="$repo/.venv/bin/python"
else
    python="python3"
fi
