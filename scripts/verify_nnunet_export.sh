#!/usr/bin/env bash
# Run nnU-Net's own dataset-integrity check on a segsynth export.
#
# nnunetv2's declared dependencies pull a second, CUDA build of torch (GBs), so it is not part of the
# default install. This installs only the modules its checker imports, without their dependencies,
# into .cache/nnunet-verify, and runs tests/test_nnunet_verify.py (skipped when nnunetv2 is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=.cache/nnunet-verify
if [ ! -d "$TARGET/nnunetv2" ]; then
  .venv/bin/python -m pip install -q --no-deps --target "$TARGET" \
    nnunetv2==2.8.1 batchgenerators acvl_utils simpleitk pandas dynamic_network_architectures threadpoolctl \
    blosc2 msgpack ndindex numexpr connected-components-3d httpx httpcore h11 anyio sniffio
fi
PYTHONPATH="$TARGET" .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_nnunet_verify.py "$@"
