#!/usr/bin/env bash
# Create (or bring up to date) .venv-bench: trainmon installed editable with its server extra, plus
# the peers that bench/sdk_overhead.py measures beside it (bench/requirements-peers.txt).
# Idempotent: a second run with nothing changed only prints what is installed.
#   bash bench/setup_peers.sh            # PYTHON=python3.11 VENV_BENCH=.venv-bench to override
#   bash bench/setup_peers.sh --frameworks
#       also trainmon's frameworks-test extra (torch, Lightning, transformers, Keras with its JAX and
#       TensorFlow backends: ~3.5 GB to download) and the requirement lines tagged "# frameworks"
#       (tensorboard), for `sdk_overhead.py --frameworks`
set -euo pipefail
cd "$(dirname "$0")/.."

FRAMEWORKS=0
for arg in "$@"; do
  case "$arg" in
    --frameworks) FRAMEWORKS=1 ;;
    *) echo "setup_peers: unknown option $arg (known: --frameworks)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
VENV=${VENV_BENCH:-.venv-bench}
REQS=bench/requirements-peers.txt
if [ "$FRAMEWORKS" = 1 ]; then
  EXTRAS="server,frameworks-test"
  STAMP="$VENV/.peers-frameworks-installed"
else
  EXTRAS="server"
  STAMP="$VENV/.peers-installed"
fi
# The requirement lines for this mode: without --frameworks, those tagged "# frameworks" are left out.
REQS_NOW=$(mktemp)
trap 'rm -f "$REQS_NOW"' EXIT
if [ "$FRAMEWORKS" = 1 ]; then
  cp "$REQS" "$REQS_NOW"
else
  grep -v '#[[:space:]]*frameworks[[:space:]]*$' "$REQS" > "$REQS_NOW" || true
fi

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
  echo "setup_peers: installing trainmon (editable, [$EXTRAS])..."
  "$PY" -m pip install --quiet -e ".[$EXTRAS]"
  echo "setup_peers: installing the peers from $REQS..."
  failed=()
  if ! "$PY" -m pip install --quiet -r "$REQS_NOW"; then
    # One peer that does not install on this Python must not stop the others: retry one by one.
    echo "setup_peers: installing all peers at once failed; trying them one by one"
    while read -r req; do
      req=${req%%#*}
      req=${req%"${req##*[![:space:]]}"}
      case "$req" in '') continue ;; esac
      echo "setup_peers:   $req"
      "$PY" -m pip install --quiet "$req" || failed+=("$req")
    done < "$REQS_NOW"
  fi
  if [ ${#failed[@]} -gt 0 ]; then
    echo "setup_peers: could NOT install: ${failed[*]} (sdk_overhead.py reports them as errors)"
  else
    touch "$STAMP"
    if [ "$FRAMEWORKS" = 1 ]; then touch "$VENV/.peers-installed"; fi  # the plain set is a subset
  fi
fi

echo "setup_peers: installed in $VENV:"
FRAMEWORKS=$FRAMEWORKS TF_CPP_MIN_LOG_LEVEL=3 TF_ENABLE_ONEDNN_OPTS=0 "$PY" - <<'PYEOF'
import importlib
import importlib.metadata as md
import os

packages = [("trainmon", "trainmon"), ("numpy", "numpy"), ("confluent-kafka", "confluent_kafka"),
            ("wandb", "wandb"), ("mlflow", "mlflow"), ("aim", "aim"), ("tensorboardX", "tensorboardX")]
if os.environ["FRAMEWORKS"] == "1":
    packages += [("torch", "torch"), ("lightning", "lightning"), ("transformers", "transformers"),
                 ("keras", "keras"), ("tensorflow-cpu", "tensorflow"), ("tensorboard", "tensorboard")]
for dist, module in packages:
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
if [ "$FRAMEWORKS" = 1 ]; then
  echo "  and: $PY bench/sdk_overhead.py --frameworks lightning,transformers,keras --json bench/results/framework_overhead.json"
fi
