#!/usr/bin/env bash
# Writes (to standard output) a Kubernetes Indexed Job that runs a sharded verification: pod i
# verifies the segments k with (k - 1) mod N = i (replay reads i from JOB_COMPLETION_INDEX, which
# Kubernetes sets in an Indexed Job), signs its report with the verifier's key, mounted from a
# Secret, and keeps it write-once in RESULTS. Then, anywhere:
#   replay collect RUN --shards N --id ID --results RESULTS --verifier-key PUB
# The manifest is JSON, which kubectl reads as it reads YAML: kubectl apply -f job.json
#
# usage: examples/cluster/k8s-indexed-job.sh RUN N RESULTS ID IMAGE KEY_SECRET [STORE_SECRET]
#   RUN           the run's URL or path as the pods reach it (s3://…, or a mounted volume)
#   N             the number of shards
#   RESULTS       where the reports go: not the run's store (the run's owner controls that)
#   ID            the verification's id, shared by all shards: random (openssl rand -hex 16)
#   IMAGE         a container image with the replay binary on its PATH
#   KEY_SECRET    a Secret holding the verifier's private key as `signing-key.pem`
#                 (kubectl create secret generic KEY_SECRET --from-file=signing-key.pem)
#   STORE_SECRET  optional: a Secret whose entries become the pods' environment (the object
#                 store's AWS_* settings)
# A shard's verdict (exit 2) or a refusal (exit 3: its shard already reported under ID, a usage
# error) does not change on retry: those fail their index at once; a crash is retried twice.
set -euo pipefail
[ $# -ge 6 ] && [ $# -le 7 ] || {
  echo "usage: $0 RUN N RESULTS ID IMAGE KEY_SECRET [STORE_SECRET]" >&2
  exit 3
}
python3 - "$@" <<'PY'
import json, sys
run, n, results, vid, image, key_secret = sys.argv[1:7]
store_secret = sys.argv[7] if len(sys.argv) > 7 else None
n = int(n)
container = {
    "name": "verify",
    "image": image,
    "command": ["replay", "verify", run, "--all", "--shards", str(n), "--results", results,
                "--id", vid, "--signing-key", "/var/run/verifier/signing-key.pem",
                "--json", "--quiet"],
    "volumeMounts": [{"name": "verifier-key", "mountPath": "/var/run/verifier",
                      "readOnly": True}],
}
if store_secret:
    container["envFrom"] = [{"secretRef": {"name": store_secret}}]
job = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": f"replay-verify-{vid.lower().replace('_', '-')[:40].strip('-')}",
                 "labels": {"app.kubernetes.io/name": "replay-verify"}},
    "spec": {
        "completionMode": "Indexed",
        "completions": n,
        "parallelism": n,
        "backoffLimitPerIndex": 2,
        "podFailurePolicy": {"rules": [{
            "action": "FailIndex",
            "onExitCodes": {"containerName": "verify", "operator": "In", "values": [2, 3]},
        }]},
        "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": [{"name": "verifier-key",
                         "secret": {"secretName": key_secret, "defaultMode": 0o400}}],
        }},
    },
}
json.dump(job, sys.stdout, indent=2)
print()
PY
