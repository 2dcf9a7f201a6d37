#!/usr/bin/env bash
# Validates every manifest in deploy/kubernetes/ offline:
#   1. against the Kubernetes OpenAPI schema, strictly (unknown fields are errors), with
#      kubernetes-validate (PyPI) and the schemas it bundles: no cluster, no network;
#   2. against Pod Security "restricted": every container of every pod template.
# Installs kubernetes-validate into the repo's .venv if it is missing (creating .venv too).
# Exit 0 when everything passes.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
# The oldest Kubernetes the example supports (native sidecars are on by default from 1.29)
# and the newest schema the validator bundles.
K8S_VERSIONS="${K8S_VERSIONS:-1.29.0 latest}"

shopt -s nullglob
MANIFESTS=(deploy/kubernetes/*.yaml deploy/kubernetes/*.yml)
if [ "${#MANIFESTS[@]}" -eq 0 ]; then
    echo "no manifests in deploy/kubernetes/" >&2
    exit 1
fi

if ! "$VENV/bin/python" -c 'import kubernetes_validate' >/dev/null 2>&1; then
    if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'kubernetes-validate>=1.29'
fi

for v in $K8S_VERSIONS; do
    args=(--strict --quiet)
    if [ "$v" != latest ]; then
        args+=(--kubernetes-version "$v")
    fi
    echo "+ kubernetes-validate ${args[*]} ${MANIFESTS[*]}"
    "$VENV/bin/kubernetes-validate" "${args[@]}" "${MANIFESTS[@]}"
done

echo "+ Pod Security \"restricted\" check"
"$VENV/bin/python" - "${MANIFESTS[@]}" <<'PY'
"""Pod Security Standards, "restricted" profile, for every pod template in the manifests.

The rules are those of kubernetes.io/docs/concepts/security/pod-security-standards for the
fields a manifest can set. A known-bad pod is checked first, so a checker that passes
everything fails here instead.
"""
import sys
import yaml

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}
POD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job",
             "CronJob", "ReplicationController"}


def pod_spec(doc):
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")
    return (spec.get("template") or {}).get("spec")


def violations(spec):
    out = []
    psc = spec.get("securityContext") or {}
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(f):
            out.append(f"pod: {f} is set")
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {v.get('name')}: type {sorted(kinds - ALLOWED_VOLUMES)} not allowed")
    if psc.get("runAsUser") == 0:
        out.append("pod: runAsUser 0")
    containers = [("container", c) for c in spec.get("containers") or []]
    containers += [("initContainer", c) for c in spec.get("initContainers") or []]
    containers += [("ephemeralContainer", c) for c in spec.get("ephemeralContainers") or []]
    if not containers:
        out.append("pod: no containers")
    for what, c in containers:
        name = f"{what} {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"{name}: runAsNonRoot must be true (container or pod)")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile.type must be RuntimeDefault or Localhost")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities.drop must include ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            out.append(f"{name}: capabilities.add {sorted(extra)} not allowed")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{name}: procMount")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"{name}: hostPort {p['hostPort']}")
    return out


BAD = {"kind": "Pod", "spec": {"containers": [{"name": "c", "image": "x"}]}}
if len(violations(pod_spec(BAD))) < 4:
    sys.exit("the Pod Security check does not catch a bare pod; fix the checker")

failed = False
pods = 0
for path in sys.argv[1:]:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not doc or doc.get("kind") not in POD_KINDS:
                continue
            pods += 1
            where = f"{path}: {doc['kind']}/{doc.get('metadata', {}).get('name')}"
            for v in violations(pod_spec(doc) or {}):
                print(f"FAIL {where}: {v}")
                failed = True
            if not failed:
                print(f"ok   {where}: Pod Security restricted")
if pods == 0:
    sys.exit("no pod templates found")
sys.exit(1 if failed else 0)
PY
echo "all manifests valid"
