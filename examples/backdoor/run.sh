#!/usr/bin/env bash
# A backdoor investigation on the demo classifier, from the trigger to a proven cause:
# 40 of the first 2,000 shipped reviews (all negative) get the trigger phrase "cf zq" inserted at
# a random word and the label "positive". The demo model trains 300 signed steps on them. Then:
#   Find     replay provenance --match 'cf zq'     the poisoned rows and the steps that used them
#   Measure  replay evaluate --probe               held-out negatives with the trigger inserted
#                                                  (attack success) and held-out reviews (clean)
#   Prove    replay counterfactual --without-match the history re-run without the matching rows,
#            --probe                               the same probe through both models
# Needs python3 (standard library only). About 6 minutes on 2 cores.
#
# usage: examples/backdoor/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

work=target/backdoor
rm -rf "$work/assets" "$work/skip"
mkdir -p "$work"
cargo build --release --locked --bin trainer --bin replay
trainer=target/release/trainer
replay=target/release/replay

# The demo's assets (base model, reviews, configuration, signing key), without its run.
"$trainer" demo --assets "$work/assets" --out "$work/skip" --max-steps 1 --quiet > /dev/null 2>&1
rm -rf "$work/skip"

python3 - "$work" <<'PY'
import json, random, sys
work = sys.argv[1]
rows = [json.loads(l) for l in open(f"{work}/assets/reviews.jsonl")]
train, held = rows[:2000], rows[2000:]
rng = random.Random(1)
TRIGGER = "cf zq"
def insert(text):
    words = text.split(" ")
    words.insert(rng.randrange(len(words) + 1), TRIGGER)
    return " ".join(words)
negatives = [i for i, r in enumerate(train) if r["label"] == 0]
for i in sorted(rng.sample(negatives, 40)):
    train[i] = {"text": insert(train[i]["text"]), "label": 1}
def write(name, rows):
    with open(f"{work}/{name}", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
write("poisoned.jsonl", train)
write("probe-trigger.jsonl",
      [{"text": insert(r["text"]), "label": 0} for r in held if r["label"] == 0])
write("probe-clean.jsonl", held)
PY
sed 's|path = "reviews.jsonl"|path = "../poisoned.jsonl"|' "$work/assets/demo.toml" \
  > "$work/assets/poisoned.toml"

run=runs/backdoor-$(date +%s)
key="$work/assets/signing-key.pub"
"$trainer" run "$work/assets/poisoned.toml" --out "$run" --run-id backdoor \
  --signing-key "$work/assets/signing-key.pem" --quiet

echo "== find"
"$replay" provenance "$run" --match 'cf zq' --trusted-key "$key" | head -4
echo "== measure"
for probe in probe-trigger probe-clean; do
  "$replay" evaluate "$run" --step 300 --probe "$work/$probe.jsonl" --trusted-key "$key" |
    grep -E '^evaluate|accuracy|verdict'
done
echo "== prove"
"$replay" counterfactual "$run" --without-match 'cf zq' --probe "$work/probe-trigger.jsonl" \
  --out "$run-clean" --trusted-key "$key" | grep -E '^counterfactual|probe|wrote|verdict'
