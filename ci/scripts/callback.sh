#!/bin/sh
# Tells the controller about this run:
#   callback.sh stage STAGE STATUS [DETAIL]   STATUS: running|success|failed|canceled|skipped
#   callback.sh failed STAGE REASON           the run fails with REASON
#   callback.sh image IMAGE METRICS_JSON      IMAGE is <registry>/<repo>@sha256:<digest>
# POSTs JSON to $RETRAIN_CALLBACK_URL with the run's token, which is never printed or put in argv.
# Exit 0 when delivered, or when the controller says the event can no longer matter (403 run
# finished, 409 conflict); exit 1 otherwise: 400/401/404 are bugs and must be seen.
set -eu
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

usage() {
    log "usage: callback.sh stage STAGE STATUS [DETAIL] | failed STAGE REASON | image IMAGE METRICS_JSON"
    exit 2
}
cut1() { printf '%s' "$1" | cut -c "1-$2"; }

case "${1:-}" in
stage)
    [ $# -ge 3 ] || usage
    check stage "$2" '[a-z0-9][a-z0-9_.-]{0,39}'
    check status "$3" 'running|success|failed|canceled|skipped'
    body="{\"event\":\"stage\",\"stage\":\"$2\",\"status\":\"$3\",\"detail\":$(json_str "$(cut1 "${4:-}" 1000)")}"
    ;;
failed)
    [ $# -ge 3 ] || usage
    check stage "$2" '[a-z0-9][a-z0-9_.-]{0,39}'
    body="{\"event\":\"failed\",\"stage\":\"$2\",\"reason\":$(json_str "$(cut1 "$3" 2000)")}"
    ;;
image)
    [ $# -ge 3 ] || usage
    check image "$2" '[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+@sha256:[0-9a-f]{64}'
    case "$3" in "{"*"}") ;; *) log "metrics must be a JSON object: $3"; exit 2 ;; esac
    body="{\"event\":\"image\",\"image\":\"$2\",\"metrics\":$3}"
    ;;
*) usage ;;
esac

if [ -z "${RETRAIN_CALLBACK_URL:-}" ] || [ -z "${RETRAIN_CALLBACK_TOKEN:-}" ]; then
    log "RETRAIN_CALLBACK_URL or RETRAIN_CALLBACK_TOKEN is not set: was this pipeline started by the controller?"
    exit 1
fi

answer=$(mktemp)
trap 'rm -f "$answer"' EXIT
# The token goes in through curl's config on stdin, so it never shows in argv (ps) or in the log.
# No --fail on purpose: with it, --retry-all-errors would retry 4xx answers as well. Without it,
# connection errors, timeouts and 408/429/5xx are retried, and any other answer is judged below.
code=$(printf 'header = "Authorization: Bearer %s"\n' "$RETRAIN_CALLBACK_TOKEN" |
    curl --silent --show-error --config - \
        --retry 5 --retry-all-errors --retry-max-time 120 --max-time 10 \
        --header 'Content-Type: application/json' --data-binary "$body" \
        --output "$answer" --write-out '%{http_code}' \
        "$RETRAIN_CALLBACK_URL") || true
said=$(head -c 600 "$answer" 2>/dev/null | tr '\n' ' ')
what="$1 $2"
[ "$1" = stage ] && what="$what $3"

case "$code" in
2??)
    log "callback $what: $code $said"
    ;;
409)
    log "callback $what: conflict, not retried ($said)"
    ;;
403)
    case "$said" in
    *"run is finished"*) log "callback $what: the run is already finished, nothing to do ($said)" ;;
    *) log "callback $what: 403, the callback token was refused ($said)"; exit 1 ;;
    esac
    ;;
000 | "")
    log "callback $what: the controller at $RETRAIN_CALLBACK_URL could not be reached"
    exit 1
    ;;
*)
    log "callback $what: HTTP $code ($said)"
    exit 1
    ;;
esac
