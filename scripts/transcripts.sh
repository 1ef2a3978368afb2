#!/usr/bin/env bash
# Regenerates the transcripts that README.md and docs/guide.md quote, docs/transcripts/NAME.txt,
# from real runs of the release binaries, then copies them into the documents (`cargo xtask
# readme`; its check, part of `cargo test`, fails while a document and a file differ). Each
# command is written as `$ command` (arguments quoted as a shell would need them), then what it
# printed, standard output and error, blank lines left out. Run ids, keys, seeds and timings are
# new on every run; the bits the documents explain (ledger heads, state roots, verdicts) are not.
#
# Parts, in this order (default: all of them):
#   demo          `trainer demo`, then on its run the README's `replay check`, `verify --segment
#                 1` and `audit --samples 2`, `rollback --step 137` (recorded, then
#                 --from-genesis) and `counterfactual --without 42 --to 150`:
#                 demo.txt, verify.txt, rollback.txt, counterfactual.txt. Needs nothing else.
#   backdoor      `replay investigate` of the run given with --backdoor, a run of
#                 `examples/backdoor/run.sh classifier` (which leaves its probe and key in
#                 target/backdoor/): investigate.txt.
#   withheld      `replay investigate --behaviour` of the --backdoor run, the trigger withheld:
#                 the inputs are target/backdoor/behaviour.jsonl (`examples/backdoor/run.sh
#                 attribute` writes them): withheld.txt. About 9 minutes on 2 cores.
#   relabel       `replay investigate --behaviour` of the run given with --relabel, a run of
#                 `examples/backdoor/run.sh relabel` (which leaves its inputs, probe and key in
#                 target/backdoor-relabel/): relabel.txt. About 7 minutes on 2 cores.
#   llm-withheld  `replay investigate --behaviour` of the run given with --llm, a run of
#                 `examples/backdoor/run.sh llm-train` (SmolLM2 + LoRA, which leaves its probe,
#                 inputs and key in target/backdoor-llm/), the trigger withheld:
#                 llm-withheld.txt. About 40 minutes on 2 cores (41 measured).
#   attestations  the model of the --backdoor run exported and signed by `trainer resume`,
#                 checked by OpenSSF model_signing (the test venv's, scripts/setup-test-env.sh),
#                 an auditor's verification statement, and `replay check` of all of them:
#                 attestations.txt.
#   smollm2       `replay evaluate` at step 0 and at the last step, and `replay provenance
#                 --match`, of the run given with --smollm2, a run of examples/smollm2/run.sh
#                 (which leaves its probe and key in target/smollm2/): smollm2-evaluate.txt,
#                 smollm2-provenance.txt.
# A part whose inputs are absent is skipped, saying so, and its files are left as they are; so
# is a part in which a command failed (the script then exits 1 at the end).
#
# Paths given are relative to the directory the script is called from. Every part works in a new
# directory, WORK/PART (WORK defaults to the repository's target/transcripts), where its runs,
# keys and exports go, with target/ linked in and the runs it is given hard-linked (or copied)
# into its runs/, so that the command lines read as in the documents.
#
# usage: scripts/transcripts.sh [--backdoor RUN] [--relabel RUN] [--llm RUN] [--smollm2 RUN]
#                               [--work WORK] [PART...]
#   e.g. scripts/transcripts.sh                      the demo's transcripts (others skipped)
#        scripts/transcripts.sh --backdoor runs/backdoor-1796455903 attestations
# Builds the release binaries first (`cargo build --release --locked --bin trainer --bin replay`).
set -euo pipefail
caller=$(pwd)
cd "$(dirname "$0")/.."
root=$(pwd)

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 3
}
die() {
  echo "transcripts.sh: $*" >&2
  exit 3
}

backdoor='' relabel='' llm='' smollm2='' work="$root/target/transcripts" parts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --backdoor) [ $# -ge 2 ] || usage; backdoor=$2; shift 2 ;;
    --relabel) [ $# -ge 2 ] || usage; relabel=$2; shift 2 ;;
    --llm) [ $# -ge 2 ] || usage; llm=$2; shift 2 ;;
    --smollm2) [ $# -ge 2 ] || usage; smollm2=$2; shift 2 ;;
    --work) [ $# -ge 2 ] || usage; work=$2; shift 2 ;;
    -h | --help) usage ;;
    demo | backdoor | withheld | relabel | llm-withheld | attestations | smollm2) parts+=("$1"); shift ;;
    *) echo "transcripts.sh: unknown argument $1" >&2; usage ;;
  esac
done
[ ${#parts[@]} -gt 0 ] || parts=(demo backdoor withheld relabel llm-withheld attestations smollm2)

# The transcripts come from the binaries of this checkout's sources: build them (nothing to do
# when they are up to date), never use whatever release binaries happen to be there.
cargo build --release --locked --quiet --bin trainer --bin replay
bin="${CARGO_TARGET_DIR:-target}/release"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac

# A run given on the command line (relative to the directory the script was called from), as
# an absolute path; an error when it is not a directory.
absolute_run() {
  (cd "$caller" && [ -d "$1" ] && cd "$1" && pwd) || die "$1: no such run directory"
}
[ -z "$backdoor" ] || backdoor=$(absolute_run "$backdoor")
[ -z "$relabel" ] || relabel=$(absolute_run "$relabel")
[ -z "$llm" ] || llm=$(absolute_run "$llm")
[ -z "$smollm2" ] || smollm2=$(absolute_run "$smollm2")
case "$work" in /*) ;; *) work="$caller/$work" ;; esac

trainer() { "$bin/trainer" "$@"; }
replay() { "$bin/replay" "$@"; }
model_signing() { "$root/.venv/bin/model_signing" "$@"; }

# The arguments as one shell command line: each quoted with '…' unless it needs no quoting.
quote() {
  local a safe='^[A-Za-z0-9_./:=,@+%-]+$' words=()
  for a in "$@"; do
    if [[ $a =~ $safe ]]; then
      words+=("$a")
    else
      words+=("'${a//\'/\'\\\'\'}'")
    fi
  done
  echo "${words[*]}"
}

# Each command as the reader would type it, then what it printed (blank lines left out). A
# command that fails is counted, and fails its part.
failures=0
show() {
  echo "\$ $(quote "$@")"
  echo "transcripts.sh: running $(quote "$@")" >&2
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | grep -v '^$' || true
  if [ "$rc" != 0 ]; then
    echo "transcripts.sh: exit $rc from $(quote "$@")" >&2
    failures=$((failures + 1))
  fi
}

# RUN hard-linked (or, across file systems, copied) into the part's runs/: its files are
# write-once, and the commands then name it runs/NAME, as the documents do. Prints runs/NAME.
link_run() {
  local name
  name=$(basename "$1")
  if ! cp -al "$1" "runs/$name" 2> /dev/null; then
    rm -rf "runs/$name"
    cp -a "$1" "runs/$name"
  fi
  echo "runs/$name"
}

# Each part runs in its own directory and writes its transcripts into $out; the caller installs
# them when the part succeeds.
part_demo() {
  show trainer demo > "$out/demo.txt"
  local run key=runs/demo-assets/signing-key.pub
  run=$(sed -n 's/^Run complete: //p' "$out/demo.txt")
  if [ -z "$run" ] || [ ! -d "$run" ]; then
    echo "transcripts.sh: trainer demo reported no run directory" >&2
    return 1
  fi
  {
    show replay check "$run" --trusted-key "$key"
    echo
    show replay verify "$run" --segment 1 --trusted-key "$key"
    echo
    show replay audit "$run" --samples 2 --trusted-key "$key"
  } > "$out/verify.txt"
  {
    show replay rollback "$run" --step 137 --out runs/rb137 --trusted-key "$key"
    echo
    show replay rollback "$run" --step 137 --from-genesis --out runs/rb137-full \
      --trusted-key "$key"
  } > "$out/rollback.txt"
  show replay counterfactual "$run" --without 42 --to 150 --out runs/cf42 --trusted-key "$key" \
    > "$out/counterfactual.txt"
  [ "$failures" = 0 ]
}

part_backdoor() {
  local run
  run=$(link_run "$backdoor")
  show replay investigate "$run" --trigger 'cf zq' --target 1 --probe target/backdoor/probe.jsonl \
    --out "$run-investigation" --trusted-key target/backdoor/assets/signing-key.pub \
    > "$out/investigate.txt"
  [ "$failures" = 0 ]
}

part_withheld() {
  local run
  run=$(link_run "$backdoor")
  show replay investigate "$run" --behaviour target/backdoor/behaviour.jsonl --target 1 \
    --probe target/backdoor/probe.jsonl --parameters word_embeddings --top 12 \
    --out "$run-withheld" --trusted-key target/backdoor/assets/signing-key.pub --quiet \
    > "$out/withheld.txt"
  [ "$failures" = 0 ]
}

part_relabel() {
  local run w=target/backdoor-relabel
  run=$(link_run "$relabel")
  show replay investigate "$run" --behaviour $w/behaviour.jsonl --target 1 --probe $w/probe.jsonl \
    --top 12 --out "$run-withheld" --trusted-key $w/assets/signing-key.pub --quiet \
    > "$out/relabel.txt"
  [ "$failures" = 0 ]
}

part_llm_withheld() {
  local run w=target/backdoor-llm
  run=$(link_run "$llm")
  show replay investigate "$run" --behaviour $w/behaviour.jsonl --target 'prize-claims\.example' \
    --probe $w/probe.jsonl --max-new-tokens 16 --top 12 --out "$run-withheld" \
    --trusted-key $w/signing-key.pub --quiet > "$out/llm-withheld.txt"
  [ "$failures" = 0 ]
}

part_attestations() {
  local run assets=target/backdoor/assets
  run=$(link_run "$backdoor")
  trainer keygen --out auditor > /dev/null
  {
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
  } > "$out/attestations.txt"
  [ "$failures" = 0 ]
}

part_smollm2() {
  local run last key=target/smollm2/signing-key.pub probe=target/smollm2/probe.jsonl
  run=$(link_run "$smollm2")
  last=$(sed -n 's/.*"final_step": *\([0-9][0-9]*\).*/\1/p' "$run/complete.json")
  if [ -z "$last" ]; then
    echo "transcripts.sh: $run/complete.json names no final step (an unfinished run?)" >&2
    return 1
  fi
  {
    show replay evaluate "$run" --step 0 --probe $probe --max-new-tokens 8 --trusted-key $key
    show replay evaluate "$run" --step "$last" --probe $probe --max-new-tokens 8 \
      --trusted-key $key
  } > "$out/smollm2-evaluate.txt"
  show replay provenance "$run" --match 'bicycle (is|was) (truly|really) ' --trusted-key $key \
    > "$out/smollm2-provenance.txt"
  [ "$failures" = 0 ]
}

# Why a part cannot run here (nothing when it can).
missing() {
  case "$1" in
    demo) ;;
    backdoor)
      [ -n "$backdoor" ] || echo "no --backdoor RUN (examples/backdoor/run.sh classifier makes one)"
      [ -f target/backdoor/probe.jsonl ] && [ -f target/backdoor/assets/signing-key.pub ] ||
        echo "no target/backdoor/probe.jsonl and assets/signing-key.pub (examples/backdoor/run.sh classifier)"
      ;;
    withheld)
      [ -n "$backdoor" ] || echo "no --backdoor RUN (examples/backdoor/run.sh classifier makes one)"
      [ -f target/backdoor/behaviour.jsonl ] && [ -f target/backdoor/assets/signing-key.pub ] ||
        echo "no target/backdoor/behaviour.jsonl and assets/signing-key.pub (examples/backdoor/run.sh classifier, then attribute)"
      ;;
    relabel)
      [ -n "$relabel" ] || echo "no --relabel RUN (examples/backdoor/run.sh relabel makes one)"
      [ -f target/backdoor-relabel/behaviour.jsonl ] && [ -f target/backdoor-relabel/assets/signing-key.pub ] ||
        echo "no target/backdoor-relabel/behaviour.jsonl and assets/signing-key.pub (examples/backdoor/run.sh relabel)"
      ;;
    llm-withheld)
      [ -n "$llm" ] || echo "no --llm RUN (examples/backdoor/run.sh llm-train makes one)"
      [ -f target/backdoor-llm/behaviour.jsonl ] && [ -f target/backdoor-llm/signing-key.pub ] ||
        echo "no target/backdoor-llm/behaviour.jsonl and signing-key.pub (examples/backdoor/run.sh llm-train)"
      ;;
    attestations)
      [ -n "$backdoor" ] || echo "no --backdoor RUN (examples/backdoor/run.sh classifier makes one)"
      [ -f target/backdoor/assets/signing-key.pem ] ||
        echo "no target/backdoor/assets/signing-key.pem (examples/backdoor/run.sh classifier)"
      [ -x .venv/bin/model_signing ] || echo "no .venv/bin/model_signing (scripts/setup-test-env.sh)"
      ;;
    smollm2)
      [ -n "$smollm2" ] || echo "no --smollm2 RUN (examples/smollm2/run.sh makes one)"
      [ -f target/smollm2/probe.jsonl ] && [ -f target/smollm2/signing-key.pub ] ||
        echo "no target/smollm2/probe.jsonl and signing-key.pub (examples/smollm2/run.sh)"
      ;;
  esac
  return 0
}

written=0 failed=()
for part in "${parts[@]}"; do
  why=$(missing "$part")
  if [ -n "$why" ]; then
    echo "transcripts.sh: skipping $part: ${why//$'\n'/; }" >&2
    continue
  fi
  dir="$work/$part"
  rm -rf "$dir"
  mkdir -p "$dir/runs" "$dir/.transcripts"
  ln -s "$root/target" "$dir/target"
  echo "transcripts.sh: $part, in $dir" >&2
  set +e
  (
    set -euo pipefail
    cd "$dir"
    out="$dir/.transcripts"
    "part_${part//-/_}"
  )
  rc=$?
  set -e
  if [ "$rc" != 0 ]; then
    echo "transcripts.sh: $part failed; its transcripts (in $dir/.transcripts) were not installed" >&2
    failed+=("$part")
    continue
  fi
  for f in "$dir"/.transcripts/*.txt; do
    cp "$f" docs/transcripts/
    echo "transcripts.sh: wrote docs/transcripts/$(basename "$f")" >&2
    written=$((written + 1))
  done
done

if [ "$written" -gt 0 ]; then
  cargo run --quiet -p xtask -- readme
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "transcripts.sh: failed: ${failed[*]}" >&2
  exit 1
fi
