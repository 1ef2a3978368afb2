#!/usr/bin/env bash
# Regenerates the transcript "Attestations other tools check" (docs/guide.md;
# docs/transcripts/attestations.txt) from a finished run of the backdoor demo
# (`examples/backdoor/run.sh classifier`, whose assets are in target/backdoor/assets): the model
# exported and signed by `trainer resume`, checked by OpenSSF model_signing (the test venv's,
# `scripts/setup-test-env.sh`), an auditor's verification statement, and `replay check` of all of
# them; then copies it into the guide (`cargo xtask readme`). Keys go to a new directory
# (default target/transcripts/attestations), so that every key and statement is new.
#
# It is the `attestations` part of scripts/transcripts.sh, run alone.
#
# usage: scripts/transcript-attestations.sh RUN [WORK]   (WORK: the parent of that directory)
set -euo pipefail
run=${1:?usage: scripts/transcript-attestations.sh RUN [WORK]}
exec "$(dirname "$0")/transcripts.sh" --backdoor "$run" ${2:+--work "$2"} attestations
