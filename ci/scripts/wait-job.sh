#!/bin/sh
# wait-job.sh NAMESPACE JOB TIMEOUT_SECONDS: until the Job is Complete (exit 0) or Failed (exit 1),
# streaming its logs meanwhile. `kubectl wait --for=condition=complete` alone never returns on a
# failed Job, so both terminal conditions are polled here, under a deadline of our own.
set -eu
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"
[ $# -eq 3 ] || { log "usage: wait-job.sh NAMESPACE JOB TIMEOUT_SECONDS"; exit 2; }
ns="$1" job="$2" timeout="$3"
interval="${RETRAIN_POLL_SECONDS:-15}"
check RETRAIN_POLL_SECONDS "$interval" '[1-9][0-9]{0,3}'

# Logs are a convenience: the follower may end early (a pod retried) and nothing depends on it.
kubectl logs --follow "job/$job" --namespace "$ns" --all-containers --pod-running-timeout=30m &
follower=$!
stop_follower() { kill "$follower" 2>/dev/null || true; wait "$follower" 2>/dev/null || true; }
trap stop_follower EXIT
# Once the Job is done the follower ends by itself; a few seconds let it print the last lines.
drain_logs() {
    i=0
    while [ "$i" -lt 10 ] && kill -0 "$follower" 2>/dev/null; do sleep 1; i=$((i + 1)); done
    stop_follower
}

deadline=$(($(date +%s) + timeout))
errors=0
# One line per true condition: TYPE|REASON|MESSAGE
query='{range .status.conditions[?(@.status=="True")]}{.type}{"|"}{.reason}{"|"}{.message}{"\n"}{end}'
while :; do
    if conditions=$(kubectl get job "$job" --namespace "$ns" --output "jsonpath=$query"); then
        errors=0
        case "
$conditions" in
        *"
Complete|"*)
            drain_logs
            log "training Job $ns/$job complete"
            exit 0
            ;;
        *"
Failed|"*)
            drain_logs
            why=$(printf '%s\n' "$conditions" | sed -n 's/^Failed|//p' | head -n 1 | sed 's/|/: /')
            fail "training Job $ns/$job failed: $why"
            ;;
        esac
    else
        errors=$((errors + 1))
        # A Job that vanished, or an API that stays unreachable, is not worth hours of polling.
        [ "$errors" -lt 5 ] || fail "cannot read training Job $ns/$job ($errors attempts in a row)"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || fail "training Job $ns/$job not finished after ${timeout}s"
    sleep "$interval"
done
