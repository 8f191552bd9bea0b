#!/usr/bin/env bash
# Create the process work pool if missing, then apply deployments/prefect.yaml (all deployments).
#
#   PREFECT_API_URL        the Prefect server to deploy to (default: the active profile's)
#   FMBENCH_WORK_POOL      work pool name (default: fmbench)
#   FMBENCH_NIGHTLY_TZ     timezone of the nightly 02:00 schedule, e.g. Europe/Berlin (default: UTC)
#   FMBENCH_OUTPUT         results location for every deployment, e.g. s3://bucket/fmbench
#                          (default: nightly -> results/nightly, on-demand -> the config's output)
#   FMBENCH_NOTIFY_BLOCK   notification block for regression alerts as TYPE/NAME, e.g. slack-webhook/benchmarks
#                          (default: unset, no automation applied; see deployments/automations.yaml)
#   PREFECT                the prefect command (default: prefect from the PATH, e.g. under `uv run`)
#   PYTHON                 the Python with fmbench's environment (default: the one beside $PREFECT, else python)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."   # entrypoints and config paths are relative to the repo root
PREFECT=${PREFECT:-prefect}
POOL=${FMBENCH_WORK_POOL:-fmbench}
TZ_NIGHTLY=${FMBENCH_NIGHTLY_TZ:-UTC}

if ! $PREFECT work-pool inspect "$POOL" >/dev/null 2>&1; then
    echo "creating process work pool '$POOL'"
    $PREFECT work-pool create "$POOL" --type process
fi

# One `prefect deploy` per deployment: with --all, prefect ignores --pool/--timezone/--param.
# (Without overrides, `prefect deploy --prefect-file deployments/prefect.yaml --all` is equivalent.)
for name in $(sed -n 's/^  - name: \([A-Za-z0-9_-]*\)$/\1/p' deployments/prefect.yaml); do
    args=(--prefect-file deployments/prefect.yaml --name "$name" --pool "$POOL")
    if grep -q "^      - cron:" <(sed -n "/^  - name: $name\$/,/^  - name:/p" deployments/prefect.yaml); then
        args+=(--timezone "$TZ_NIGHTLY")
    fi
    if [[ -n "${FMBENCH_OUTPUT:-}" ]]; then
        args+=(--param "output=$FMBENCH_OUTPUT")
    fi
    $PREFECT --no-prompt deploy "${args[@]}"
done

# The regression alert (deployments/automations.yaml), through the configured notification block.
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python
    prefect_path=$(command -v "$PREFECT" || true)
    if [[ -n "$prefect_path" && -x "$(dirname "$prefect_path")/python" ]]; then
        PYTHON="$(dirname "$prefect_path")/python"
    fi
fi
"$PYTHON" deployments/alerts.py

cat <<MSG

Deployed to work pool '$POOL'. Start a worker on each machine that should run benchmarks:

    FMBENCH_REPO=$PWD uv run --no-sync prefect worker start --pool $POOL

then run:  prefect deployment run 'fmbench/on-demand' -p config=configs/quickstart.yml --watch
MSG
