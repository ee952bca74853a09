#!/bin/sh
# Reports this job's stage to the controller.
#   stage.sh start   (before_script) checks the run is for this model, then reports `running`
#   stage.sh end     (after_script)  reports $CI_JOB_STATUS; on failure also fails the run with the
#                    reason the failing script left in $RETRAIN_OUT/failure.txt
set -eu
here=$(dirname "$0")
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"
need CI_JOB_STAGE MODEL_NAME
stage="$CI_JOB_STAGE"
detail="${CI_JOB_NAME:-$stage} ${CI_JOB_URL:-}"

case "${1:-}" in
start)
    rm -f "$RETRAIN_OUT/failure.txt"
    if [ "${RETRAIN_MODEL:-$MODEL_NAME}" != "$MODEL_NAME" ]; then
        fail "this pipeline retrains $MODEL_NAME, but run ${RETRAIN_RUN_ID:-?} is for $RETRAIN_MODEL"
    fi
    exec sh "$here/callback.sh" stage "$stage" running "$detail"
    ;;
end)
    rm -rf "${RETRAIN_TMP:-/nonexistent}"
    status="${CI_JOB_STATUS:-failed}"
    case "$status" in success | failed | canceled) ;; *) status=failed ;; esac
    sh "$here/callback.sh" stage "$stage" "$status" "$detail"
    if [ "$status" = failed ]; then
        reason=$(cat "$RETRAIN_OUT/failure.txt" 2>/dev/null || true)
        sh "$here/callback.sh" failed "$stage" "${reason:-job ${CI_JOB_NAME:-$stage} failed}"
    fi
    ;;
*)
    log "usage: stage.sh start|end"
    exit 2
    ;;
esac
