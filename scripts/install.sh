#!/usr/bin/env bash
# Install hub-export-bot and CPU torch into the active Python: the one recipe the Dockerfile and CI (.ci/run) share.
#   scripts/install.sh          the bot itself (the container image)
#   scripts/install.sh test     editable, with the test extras (CI)
# TORCH_INDEX_URL picks where torch comes from (the image uses PyTorch's CPU index: no CUDA libraries).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.13.0
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip install --no-cache-dir --quiet --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
else
    pip install --no-cache-dir --quiet "torch==$TORCH_VERSION"
fi
if [ -n "${1:-}" ]; then
    pip install --no-cache-dir --quiet -e ".[$1]"
else
    pip install --no-cache-dir --quiet .
fi
