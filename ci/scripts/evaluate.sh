#!/bin/sh
# Offline gate: the new model's EVAL_METRIC (higher is better, e.g. precision_at_k) against the model
# in production, both scored by the training Job on the same held-out data. Fails when
#   candidate < production * (1 - EVAL_MARGIN)
# Writes $RETRAIN_OUT/evaluation.json (an artifact; report.sh sends its numbers to the controller).
set -eu
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"
need MODEL_NAME RETRAIN_RUN_ID DATA_BUCKET RUNS_PREFIX EVAL_METRIC EVAL_MARGIN
check RETRAIN_RUN_ID "$RETRAIN_RUN_ID" "$RUN_ID_RE"
check EVAL_METRIC "$EVAL_METRIC" '[A-Za-z_][A-Za-z0-9_]{0,63}'
check EVAL_MARGIN "$EVAL_MARGIN" '0|0?\.[0-9]+|1|1\.0+'
metrics="$(run_uri)/output/metrics"
check metrics "$metrics" "$S3_RE"

mkdir -p "$RETRAIN_OUT"
aws s3 cp "$metrics/candidate.json" "$RETRAIN_OUT/candidate.json" --only-show-errors ||
    fail "the training Job left no $metrics/candidate.json"
aws s3 cp "$metrics/production.json" "$RETRAIN_OUT/production.json" --only-show-errors ||
    fail "the training Job left no $metrics/production.json (write {} when nothing is in production)"

# shellcheck disable=SC2016
program='
def numbers: if type == "object" then with_entries(select(.value | type == "number")) else {} end;
($c[0] | numbers) as $cand | ($p[0] | numbers) as $prod
| $cand[$metric] as $cv | $prod[$metric] as $pv
| (if $pv == null then null else $pv * (1 - $margin) end) as $floor
| {metric: $metric, margin: $margin, candidate: $cand, production: $prod, threshold: $floor,
   passed: ($cv != null and ($floor == null or $cv >= $floor)),
   summary: (
     if $cv == null then "the candidate has no \($metric)"
     elif $floor == null then "no production \($metric) to compare with; candidate \($metric) \($cv)"
     elif $cv >= $floor then "candidate \($metric) \($cv) >= \($floor) (production \($pv) less \($margin * 100)%)"
     else "candidate \($metric) \($cv) is below \($floor): production \($pv) less the \($margin * 100)% margin"
     end)}'
jq --null-input --slurpfile c "$RETRAIN_OUT/candidate.json" --slurpfile p "$RETRAIN_OUT/production.json" \
    --arg metric "$EVAL_METRIC" --argjson margin "$EVAL_MARGIN" "$program" >"$RETRAIN_OUT/evaluation.json" ||
    fail "the metrics files are not JSON"
summary=$(jq -r .summary "$RETRAIN_OUT/evaluation.json")
[ "$(jq -r .passed "$RETRAIN_OUT/evaluation.json")" = true ] || fail "evaluation: $summary"
log "evaluation passed: $summary"
