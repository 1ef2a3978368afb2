#!/usr/bin/env bash
# Prints the README's transcript "Attestations other tools check", regenerated from a finished
# run of the backdoor demo (`examples/backdoor/run.sh classifier`, whose assets are in
# target/backdoor/assets): the model exported and signed by `trainer resume`, checked by
# OpenSSF model_signing (the test venv's, `scripts/setup-test-env.sh`), an auditor's
# verification statement, and `replay check` of all of them. Keys go to a new directory
# (default target/attestations), so that every key and statement is new.
#
# usage: scripts/transcript-attestations.sh RUN [WORK]
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: scripts/transcript-attestations.sh RUN [WORK]}
work=${2:-target/attestations}
bin="${CARGO_TARGET_DIR:-target}/release"
assets=target/backdoor/assets
[ -x "$bin/replay" ] && [ -f "$assets/signing-key.pem" ] && [ -x .venv/bin/model_signing ] || {
  echo "needs a release build, examples/backdoor/run.sh classifier and the test venv" >&2
  exit 3
}
rm -rf "$work" && mkdir -p "$work"
cd "$work"
root=$(cd - > /dev/null && pwd)
trainer() { "$root/$bin/trainer" "$@"; }
replay() { "$root/$bin/replay" "$@"; }
model_signing() { "$root/.venv/bin/model_signing" "$@"; }
ln -s "$root/$(dirname "$run")" runs
ln -s "$root/target" target
run=runs/$(basename "$run")

# Each command as the reader would type it, then what it printed.
show() {
  echo "\$ $*"
  "$@" 2>&1 | grep -v '^$' || true
}
trainer keygen --out auditor > /dev/null
echo '```text'
echo "\$ trainer keygen --out keys --kind p256"
trainer keygen --out keys --kind p256 > /dev/null
show trainer resume "$run" --export model --signing-key $assets/signing-key.pem \
  --model-signing-key keys/model-signing-key.pem
show model_signing verify key model --signature model/model.sig \
  --public_key keys/model-signing-key.pub.pem
show replay verify "$run" --segment 1 --attest audit.intoto.json \
  --signing-key auditor/signing-key.pem --trusted-key $assets/signing-key.pub --quiet
show replay check "$run" --export model --model-key keys/model-signing-key.pub.pem \
  --attestation audit.intoto.json --verifier-key auditor/signing-key.pub \
  --trusted-key $assets/signing-key.pub
echo '```'
