#!/usr/bin/env bash
# NVIDIA's perf_analyzer into the virtual environment, from package registries only: PyPI's
# `perf-analyzer` is an empty placeholder, but the tritonclient wheels up to 2.41 carry the binary
# (data/bin/perf_analyzer, client release 23.12). It links libb64 (Debian libb64-0d) and the CUDA
# runtime (PyPI nvidia-cuda-runtime-cu12, loaded, not used: no CUDA shared memory is asked for), which
# land beside it; $VENV/bin/perf_analyzer is a wrapper that points the loader there.
# Usage: scripts/install_perf_analyzer.sh [VENV]   (make perf-analyzer)
set -euo pipefail
VENV="${1:-.venv}"
LIB="$VENV/lib/perf_analyzer"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$LIB"
"$VENV/bin/pip" download --quiet --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
    --python-version 3.11 "tritonclient==2.41.0" -d "$work"
"$VENV/bin/python" -m zipfile -e "$work"/tritonclient-2.41.0-*.whl "$work/tritonclient"
install -m 755 "$work/tritonclient/tritonclient-2.41.0.data/data/bin/perf_analyzer" "$LIB/perf_analyzer"
"$VENV/bin/pip" download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version 3.11 "nvidia-cuda-runtime-cu12>=12.3,<13" -d "$work"
"$VENV/bin/python" -m zipfile -e "$work"/nvidia_cuda_runtime_cu12-*.whl "$work/cudart"
install -m 644 "$work/cudart/nvidia/cuda_runtime/lib/libcudart.so.12" "$LIB/"
chmod a+rwx "$work"  # apt-get download fetches as the _apt user
(cd "$work" && apt-get download libb64-0d >/dev/null)
dpkg -x "$work"/libb64-0d_*.deb "$work/b64"
install -m 644 "$work"/b64/usr/lib/*/libb64.so.0d "$LIB/"
cat > "$VENV/bin/perf_analyzer" <<WRAPPER
#!/bin/sh
LD_LIBRARY_PATH="$(cd "$LIB" && pwd)\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$(cd "$LIB" && pwd)/perf_analyzer" "\$@"
WRAPPER
chmod 755 "$VENV/bin/perf_analyzer"
"$VENV/bin/perf_analyzer" --version
