#!/usr/bin/env bash
# Makes the perf_analyzer binary shipped by tritonclient[all] runnable on this machine
# (Debian 12, no GPU). Idempotent: run it as often as you like.
#
#   . .venv/bin/activate
#   bash bench/setup.sh            # installs what is missing, prints the LD_LIBRARY_PATH to use
#   bash bench/setup.sh --peer     # also the benchmark peer (PyTriton) and locust
#   eval "$(bash bench/setup.sh --print-env)"   # only prints 'export LD_LIBRARY_PATH=...'
#   bash bench/setup.sh --feast    # only the Feast peer of bench/features.py: a separate virtualenv
#                                  # .venv-feast (or $FEAST_VENV) with feast[redis]==0.67.0; nothing
#                                  # else is touched (Feast's pins clash with the project's .venv)
#
# What perf_analyzer needs:
#   libb64.so.0d     Debian package libb64-0d (installed with apt-get only when missing)
#   libcudart.so.12  PyPI package nvidia-cuda-runtime-cu12 (pip, into the active
#                    environment); the library only has to load, no GPU is used.
# bench/perf.py builds the same LD_LIBRARY_PATH by itself, so the Python tools work
# without exporting anything; the export is for running perf_analyzer by hand.
set -euo pipefail

PEER=0
PRINT_ENV=0
FEAST=0
for arg in "$@"; do
  case "$arg" in
    --peer) PEER=1 ;;
    --print-env) PRINT_ENV=1 ;;
    --feast) FEAST=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

# Requirements (keep in sync with docs/benchmarks.md).
CUDART_REQ="nvidia-cuda-runtime-cu12>=12,<13"
PEER_REQS=("nvidia-pytriton>=0.7,<0.8" "locust>=2.18,<2.19")
FEAST_VERSION="0.67.0"
FEAST_REQ="feast[redis]==$FEAST_VERSION"

PY="${PYTHON:-python}"
if [[ -z "${VIRTUAL_ENV:-}" && -z "${PYTHON:-}" && -x "$(dirname "$0")/../.venv/bin/python" ]]; then
  PY="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
fi

log() { if [[ $PRINT_ENV == 0 ]]; then echo "[setup] $*" >&2; fi; }

# --feast: the Feast peer's own virtualenv, and nothing else.
if [[ $FEAST == 1 ]]; then
  FEAST_VENV="${FEAST_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv-feast}"
  check_feast() {
    [[ -x "$FEAST_VENV/bin/python" ]] && "$FEAST_VENV/bin/python" - "$FEAST_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
import feast, redis, pyarrow  # noqa: F401  (the redis extra and the parquet reader)
sys.exit(version("feast") != sys.argv[1])
EOF
  }
  if check_feast; then
    log "$FEAST_REQ: present in $FEAST_VENV"
  else
    # the base interpreter of $PY (a venv made from a venv gets the same base Python)
    BASE_PY="$("$PY" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
    log "creating $FEAST_VENV ($("$BASE_PY" --version 2>&1)) and installing $FEAST_REQ"
    [[ -x "$FEAST_VENV/bin/python" ]] || "$BASE_PY" -m venv "$FEAST_VENV"
    "$FEAST_VENV/bin/python" -m pip install -q --upgrade pip
    "$FEAST_VENV/bin/python" -m pip install -q "$FEAST_REQ"
    check_feast || { echo "$FEAST_REQ did not import in $FEAST_VENV" >&2; exit 1; }
    log "$FEAST_REQ: installed in $FEAST_VENV"
  fi
  echo "$FEAST_VENV/bin/python"
  exit 0
fi

cudart_dir() {
  "$PY" - <<'EOF'
import importlib.util, os, sys
spec = importlib.util.find_spec("nvidia")
for base in (spec.submodule_search_locations if spec else []):
    d = os.path.join(base, "cuda_runtime", "lib")
    if os.path.exists(os.path.join(d, "libcudart.so.12")):
        print(d)
        sys.exit(0)
sys.exit(1)
EOF
}

if [[ $PRINT_ENV == 0 ]]; then
  # 1. libb64 (Debian)
  LDCONFIG="$(command -v ldconfig || echo /sbin/ldconfig)"
  if "$LDCONFIG" -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
    log "libb64.so.0d: present"
  else
    log "libb64.so.0d: missing, installing Debian package libb64-0d"
    SUDO=""
    if [[ $(id -u) != 0 ]]; then SUDO="sudo"; fi
    if ! $SUDO apt-get install -y -qq libb64-0d >/dev/null 2>&1; then
      $SUDO apt-get update -qq >/dev/null
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null
    fi
  fi

  # 2. libcudart.so.12 (PyPI)
  if cudart_dir >/dev/null; then
    log "libcudart.so.12: present ($(cudart_dir))"
  else
    log "libcudart.so.12: missing, pip install '$CUDART_REQ'"
    "$PY" -m pip install -q "$CUDART_REQ"
  fi

  # 3. optional: the peer and locust
  if [[ $PEER == 1 ]]; then
    if "$PY" -c "import pytriton, locust" 2>/dev/null; then
      log "nvidia-pytriton, locust: present"
    else
      log "pip install ${PEER_REQS[*]}"
      "$PY" -m pip install -q "${PEER_REQS[@]}"
    fi
  fi
fi

CUDART_DIR="$(cudart_dir)" || { echo "libcudart.so.12 not found after install" >&2; exit 1; }
LDP="$CUDART_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if [[ $PRINT_ENV == 1 ]]; then
  echo "export LD_LIBRARY_PATH=$LDP"
  exit 0
fi

# 4. check that the binary now loads
PA="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")/perf_analyzer"
[[ -x "$PA" ]] || PA="$(command -v perf_analyzer || true)"
if [[ -z "$PA" ]]; then
  echo "perf_analyzer not found: pip install 'tritonclient[all]'" >&2
  exit 1
fi
if LD_LIBRARY_PATH="$LDP" ldd "$PA" | grep -q 'not found'; then
  echo "perf_analyzer still has unresolved libraries:" >&2
  LD_LIBRARY_PATH="$LDP" ldd "$PA" | grep 'not found' >&2
  exit 1
fi
log "perf_analyzer OK: $PA"
echo "export LD_LIBRARY_PATH=$LDP"
