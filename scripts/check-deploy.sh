#!/usr/bin/env bash
# Checks deploy/ (part of `make test`):
#   1. hadolint lints deploy/Dockerfile; any finding, style included, fails;
#   2. kubectl's built-in kustomize renders each overlay in deploy/k8s/overlays;
#   3. kubernetes-validate checks every rendered resource against the
#      Kubernetes API schemas (shipped with it, offline), in strict mode, so an
#      unknown or misspelt field fails too;
#   4. a few checks of what ties the manifests to kiln-server: kiln.toml's keys
#      are the server's (it refuses unknown ones), the termination grace period
#      covers the preStop sleep plus shutdown_grace_seconds, the probes are
#      gRPC on the server's port, the gpu overlay asks for a GPU and the cpu
#      overlay does not; without a database one server has every role; on a
#      shared database (KILN_DATABASE_URL) the roles are sets kiln-server
#      runs, with api and trainer somewhere, every server has the URL from a
#      Secret, the shared volume is ReadWriteMany (or, with
#      KILN_OBJECT_STORE_URL from a Secret on every server, data_dir is an
#      emptyDir cache), and several replicas roll.
# The tools are in the venv that scripts/setup.sh fills ($KILN_CACHE/venv).
# KILN_K8S_VERSION picks the Kubernetes version to validate against.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${KILN_CACHE:-$HOME/.cache/kiln}
bin=$cache/venv/bin
k8s_version=${KILN_K8S_VERSION:-1.30.0}

for tool in python hadolint kubectl kubernetes-validate; do
  if [[ ! -x $bin/$tool ]]; then
    echo "check-deploy: $bin/$tool is missing; run scripts/setup.sh" >&2
    exit 1
  fi
done

cd "$root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "check-deploy: hadolint deploy/Dockerfile"
"$bin/hadolint" --no-color --failure-threshold style deploy/Dockerfile

overlays=()
for dir in deploy/k8s/overlays/*/; do
  name=$(basename "$dir")
  overlays+=("$name")
  echo "check-deploy: kubectl kustomize ${dir%/}"
  "$bin/kubectl" kustomize "${dir%/}" >"$tmp/$name.yaml"
  echo "check-deploy: kubernetes-validate --strict (Kubernetes $k8s_version) $name"
  "$bin/kubernetes-validate" --strict --kubernetes-version "$k8s_version" "$tmp/$name.yaml"
done
if [[ ${#overlays[@]} -eq 0 ]]; then
  echo "check-deploy: no overlays under deploy/k8s/overlays" >&2
  exit 1
fi

echo "check-deploy: kiln-specific checks"
"$bin/python" - "$tmp" services/kiln-server/src/config.rs "${overlays[@]}" <<'EOF'
import os
import re
import sys
import tomllib

import yaml

out, config_rs, overlays = sys.argv[1], sys.argv[2], sys.argv[3:]

# The server's configuration keys: the fields of `pub struct Config`.
source = open(config_rs).read()
struct = re.search(r"pub struct Config \{(.*?)\n\}", source, re.S)
keys = set(re.findall(r"^\s*pub (\w+):", struct.group(1), re.M))
assert "shutdown_grace_seconds" in keys, f"could not read the keys of {config_rs}"

def cpu(quantity):
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)

failures = []
for name in overlays:
    docs = [d for d in yaml.safe_load_all(open(os.path.join(out, f"{name}.yaml"))) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    def check(ok, what):
        if not ok:
            failures.append(f"{name}: {what}")

    deployments = by_kind.get("Deployment", [])

    ALL = frozenset({"api", "serve", "trainer"})
    SETS = [ALL, {"api"}, {"serve"}, {"trainer"}, {"api", "serve"}, {"api", "trainer"},
            {"serve", "trainer"}]

    def roles(dep):
        for c in dep["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                if e["name"] == "KILN_ROLES":
                    return frozenset(r.strip() for r in e.get("value", "").split(","))
        return ALL

    def database(dep):
        return any(e["name"] == "KILN_DATABASE_URL"
                   for c in dep["spec"]["template"]["spec"]["containers"] for e in c.get("env", []))

    # Embedded: one server with every role. Shared (KILN_DATABASE_URL): any
    # Deployments of the role sets kiln-server runs, with the api and the
    # trainer role somewhere.
    shared = any(database(d) for d in deployments)
    for dep in deployments:
        check(roles(dep) in SETS, f"{dep['metadata']['name']}: KILN_ROLES {sorted(roles(dep))} "
              "is not a set kiln-server runs")
    check(any("api" in roles(d) for d in deployments), "no Deployment has the api role")
    check(any("trainer" in roles(d) for d in deployments), "no Deployment has the trainer role")
    if not shared:
        check(len(deployments) == 1 and roles(deployments[0]) == ALL,
              "without KILN_DATABASE_URL, one Deployment with every role")
    pvcs = {d["metadata"]["name"]: d for d in by_kind.get("PersistentVolumeClaim", [])}
    hpa_targets = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind.get("HorizontalPodAutoscaler", [])}
    summary = []
    for dep in deployments:
        dname = dep["metadata"]["name"]
        held = roles(dep)

        def dcheck(ok, what):
            check(ok, f"{dname}: {what}")

        spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
        if not shared:
            dcheck(spec.get("replicas") == 1, "replicas must be 1 (jobs run in its memory)")
            dcheck(spec.get("strategy", {}).get("type") == "Recreate",
                   "strategy must be Recreate (it holds the data directory's lock)")
        elif spec.get("replicas", 1) > 1 or dname in hpa_targets:
            dcheck(spec.get("strategy", {}).get("type") == "RollingUpdate",
                   "several replicas roll (RollingUpdate): they hold no lock")
        containers = [c for c in pod["containers"] if c["name"] == "kiln-server"]
        dcheck(len(containers) == 1, "no container named kiln-server")
        if not containers:
            continue
        c = containers[0]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        secret_env = {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        if shared:
            dcheck("KILN_DATABASE_URL" in secret_env,
                   "on a shared database every server needs KILN_DATABASE_URL from a Secret")
        port = int(env.get("KILN_LISTEN", "0.0.0.0:50051").rsplit(":", 1)[1])
        dcheck(any(p["containerPort"] == port and p.get("name") == "grpc" for p in c.get("ports", [])),
               f"no container port named grpc on {port}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            dcheck(c.get(probe, {}).get("grpc", {}).get("port") == port,
                   f"{probe} must be a gRPC probe on port {port}")

        # --config FILE must be a key of a mounted ConfigMap that this overlay renders.
        args = c.get("args", [])
        dcheck("--config" in args, "kiln-server is not given --config")
        if "--config" not in args:
            continue
        config_path = args[args.index("--config") + 1]
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        volume = volumes.get(mounts.get(os.path.dirname(config_path)), {})
        cm_name = volume.get("configMap", {}).get("name")
        cms = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
        toml_text = cms.get(cm_name, {}).get("data", {}).get(os.path.basename(config_path))
        dcheck(toml_text is not None,
               f"{config_path} is not a key of a ConfigMap mounted at {os.path.dirname(config_path)}")
        if toml_text is None:
            continue
        config = tomllib.loads(toml_text)
        unknown = sorted(set(config) - keys)
        dcheck(not unknown, f"kiln.toml has keys kiln-server does not know: {unknown}")

        # The data directory is on a PersistentVolumeClaim that this overlay
        # renders; on a shared database it is ReadWriteMany.
        # With object storage (KILN_OBJECT_STORE_URL from a Secret, on every
        # server) it may be each pod's cache, an emptyDir.
        data_dir = env.get("KILN_DATA_DIR") or config.get("data_dir")
        data_volume = volumes.get(mounts.get(data_dir), {})
        claim = data_volume.get("persistentVolumeClaim", {}).get("claimName")
        objects = "KILN_OBJECT_STORE_URL" in secret_env
        check(objects == any("KILN_OBJECT_STORE_URL" in {e["name"] for e in d["spec"]["template"]["spec"]["containers"][0].get("env", [])}
                             for d in deployments),
              f"{dname}: KILN_OBJECT_STORE_URL on some servers only (it must be on all, from a Secret)")
        if objects:
            dcheck(claim in pvcs or "emptyDir" in data_volume,
                   f"data_dir {data_dir} is neither a rendered PersistentVolumeClaim nor an emptyDir cache")
        else:
            dcheck(claim in pvcs, f"data_dir {data_dir} is not mounted from a rendered PersistentVolumeClaim")
        if shared and not objects and claim in pvcs:
            dcheck("ReadWriteMany" in pvcs[claim]["spec"].get("accessModes", []),
                   f"{claim} is shared by every server: it must be ReadWriteMany")

        # Shutdown: preStop sleep + shutdown_grace_seconds < terminationGracePeriodSeconds.
        pre_stop = c.get("lifecycle", {}).get("preStop", {})
        if "exec" in pre_stop:
            command = pre_stop["exec"]["command"]
            sleep = float(command[1]) if command[0] == "sleep" else 0.0
        else:
            sleep = float(pre_stop.get("sleep", {}).get("seconds", 0))
        dcheck(sleep > 0, "no preStop sleep (endpoints need a moment to drain)")
        grace = float(config.get("shutdown_grace_seconds", 10))
        period = pod.get("terminationGracePeriodSeconds", 30)
        dcheck(period > sleep + grace,
               f"terminationGracePeriodSeconds {period} must exceed preStop {sleep:g} s "
               f"+ shutdown_grace_seconds {grace:g} s")

        # Security: non-root, read-only root filesystem with /tmp writable.
        dcheck(pod.get("securityContext", {}).get("runAsNonRoot") is True, "runAsNonRoot must be true")
        dcheck(c.get("securityContext", {}).get("readOnlyRootFilesystem") is True,
               "readOnlyRootFilesystem must be true")
        dcheck("/tmp" in mounts, "/tmp must be a volume (read-only root filesystem)")

        # Resources: a GPU for the trainers of the gpu and scaled overlays
        # only; torch_threads within the CPU request.
        resources = c.get("resources", {})
        gpus = resources.get("limits", {}).get("nvidia.com/gpu", 0)
        if (name == "gpu" and held == ALL) or (name == "scaled" and held == {"trainer"}):
            dcheck(int(gpus) >= 1, "the gpu overlay must limit nvidia.com/gpu")
            dcheck("nvidia.com/gpu" in {t.get("key") for t in pod.get("tolerations", [])},
                   "the gpu overlay must tolerate the nvidia.com/gpu taint")
        else:
            dcheck(not gpus, f"the {name} overlay must not ask for a GPU here")
        request = resources.get("requests", {}).get("cpu")
        threads = config.get("torch_threads", 2)
        dcheck(request is not None and threads <= cpu(request),
               f"torch_threads {threads} exceeds the CPU request {request}")
        scaled = "an autoscaler" if dname in hpa_targets else f"replicas {spec.get('replicas')}"
        summary.append(f"{dname} ({','.join(sorted(held))}): {scaled}, gRPC probes "
                       f"on {port}, preStop {sleep:g} s + grace {grace:g} s < {period} s, "
                       f"torch_threads {threads}, GPUs {gpus}")

    # Each Service reaches one Deployment's grpc port; a PodDisruptionBudget
    # covers each Deployment.
    def selects(selector, dep):
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    for svc in by_kind.get("Service", []):
        selector = svc["spec"].get("selector", {})
        check(sum(selects(selector, d) for d in deployments) == 1,
              f"Service {svc['metadata']['name']} does not select exactly one Deployment's pods")
        check(any(p.get("targetPort") in ("grpc", 50051) and p.get("appProtocol") == "grpc"
                  for p in svc["spec"]["ports"]),
              f"Service {svc['metadata']['name']} has no grpc port")
    budgets = [b["spec"]["selector"]["matchLabels"] for b in by_kind.get("PodDisruptionBudget", [])]
    for dep in deployments:
        check(any(selects(b, dep) for b in budgets),
              f"no PodDisruptionBudget covers {dep['metadata']['name']}")
    for line in summary:
        print(f"check-deploy: {name}: {line}")

if failures:
    for f in failures:
        print(f"check-deploy: FAIL {f}", file=sys.stderr)
    sys.exit(1)
EOF
echo "check-deploy: ok (${overlays[*]})"
