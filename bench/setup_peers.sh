#!/usr/bin/env bash
# Create (or bring up to date) .venv-bench: trainmon installed editable with its server extra, plus
# the peers that bench/sdk_overhead.py measures beside it (bench/requirements-peers.txt).
# Idempotent: a second run with nothing changed only prints what is installed.
#   bash bench/setup_peers.sh            # PYTHON=python3.11 VENV_BENCH=.venv-bench to override
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV_BENCH:-.venv-bench}
REQS=bench/requirements-peers.txt
STAMP="$VENV/.peers-installed"

if [ -x "$VENV/bin/python" ]; then
  echo "setup_peers: $VENV exists ($("$VENV/bin/python" --version)); reusing it"
else
  echo "setup_peers: creating $VENV with $("$PYTHON" --version) ($(command -v "$PYTHON"))"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt "$REQS" ]; then
  echo "setup_peers: packages up to date (delete $STAMP to force a reinstall)"
else
  echo "setup_peers: upgrading pip..."
  "$PY" -m pip install --quiet --upgrade pip
  echo "setup_peers: installing trainmon (editable, [server])..."
  "$PY" -m pip install --quiet -e ".[server]"
  echo "setup_peers: installing the peers from $REQS..."
  failed=()
  if ! "$PY" -m pip install --quiet -r "$REQS"; then
    # One peer that does not install on this Python must not stop the others: retry one by one.
    echo "setup_peers: installing all peers at once failed; trying them one by one"
    while read -r req; do
      case "$req" in ''|\#*) continue ;; esac
      echo "setup_peers:   $req"
      "$PY" -m pip install --quiet "$req" || failed+=("$req")
    done < "$REQS"
  fi
  if [ ${#failed[@]} -gt 0 ]; then
    echo "setup_peers: could NOT install: ${failed[*]} (sdk_overhead.py reports them as errors)"
  else
    touch "$STAMP"
  fi
fi

echo "setup_peers: installed in $VENV:"
"$PY" - <<'PYEOF'
import importlib
import importlib.metadata as md

for dist, module in [("trainmon", "trainmon"), ("numpy", "numpy"), ("confluent-kafka", "confluent_kafka"),
                     ("wandb", "wandb"), ("mlflow", "mlflow"), ("aim", "aim"), ("tensorboardX", "tensorboardX")]:
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        print(f"  {dist:16s} NOT INSTALLED")
        continue
    try:
        importlib.import_module(module)
        state = "imports OK"
    except Exception as exc:  # a peer that installs but does not import is reported, not fatal
        state = f"IMPORT FAILED: {type(exc).__name__}: {exc}"
    print(f"  {dist:16s} {version:12s} {state}")
PYEOF
echo "setup_peers: done. Run: $PY bench/sdk_overhead.py --json bench/results/sdk_overhead.json"
