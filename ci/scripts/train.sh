#!/bin/sh
# Trains on EKS: renders $RETRAIN_JOB_TEMPLATE (k8s/training-job.yaml) with this run's values, applies
# it, then waits for the Job to complete or fail while its logs stream into this job's log.
# Applying again (a retried CI job) leaves an existing Job as it is: a finished one is not rerun;
# delete it by hand to train again under the same run.
set -eu
here=$(dirname "$0")
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"
need MODEL_NAME RETRAIN_RUN_ID DATA_BUCKET RUNS_PREFIX AWS_REGION EKS_CLUSTER TRAINING_NAMESPACE \
    TRAINING_SERVICE_ACCOUNT TRAINING_IMAGE TRAINING_CPU TRAINING_MEMORY TRAINING_DEADLINE_MINUTES \
    RETRAIN_JOB_TEMPLATE RETRAIN_TMP

check MODEL_NAME "$MODEL_NAME" "$MODEL_RE"
check RETRAIN_RUN_ID "$RETRAIN_RUN_ID" "$RUN_ID_RE"
check TRAINING_NAMESPACE "$TRAINING_NAMESPACE" '[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?'
check TRAINING_SERVICE_ACCOUNT "$TRAINING_SERVICE_ACCOUNT" '[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?'
check TRAINING_IMAGE "$TRAINING_IMAGE" '[A-Za-z0-9][A-Za-z0-9._/:@-]*'
check TRAINING_CPU "$TRAINING_CPU" '[0-9]+(\.[0-9]+|m)?'
check TRAINING_MEMORY "$TRAINING_MEMORY" '[0-9]+([KMGT]i?)?'
check TRAINING_DEADLINE_MINUTES "$TRAINING_DEADLINE_MINUTES" '[1-9][0-9]{0,4}'
check RETRAIN_REASONS "${RETRAIN_REASONS:-}" '[A-Za-z0-9_.,:-]*'
check CI_PIPELINE_URL "${CI_PIPELINE_URL:-}" '[A-Za-z0-9._~:/?#=&%+-]*'

# A Job name is a DNS label (63 characters at most): 8 + 38 + 1 + 16 for a 16-character run id.
model_label=$(printf '%s' "$MODEL_NAME" | tr _ - | cut -c 1-38)
RETRAIN_JOB_NAME="retrain-$model_label-$RETRAIN_RUN_ID"
check "Job name" "$RETRAIN_JOB_NAME" '[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?'
RETRAIN_MODEL="$MODEL_NAME"
RETRAIN_NAMESPACE="$TRAINING_NAMESPACE"
RETRAIN_REASONS="${RETRAIN_REASONS:-}"
RETRAIN_IMAGE="$TRAINING_IMAGE"
RETRAIN_DATA_URI="$(run_uri)/data/"
RETRAIN_OUTPUT_URI="$(run_uri)/output/"
check RETRAIN_OUTPUT_URI "$RETRAIN_OUTPUT_URI" "$S3_RE"
RETRAIN_SERVICE_ACCOUNT="$TRAINING_SERVICE_ACCOUNT"
RETRAIN_CPU="$TRAINING_CPU"
RETRAIN_MEMORY="$TRAINING_MEMORY"
RETRAIN_DEADLINE_SECONDS=$((TRAINING_DEADLINE_MINUTES * 60))
RETRAIN_PIPELINE_URL="${CI_PIPELINE_URL:-}"
export RETRAIN_JOB_NAME RETRAIN_NAMESPACE RETRAIN_MODEL RETRAIN_RUN_ID RETRAIN_REASONS RETRAIN_IMAGE \
    RETRAIN_DATA_URI RETRAIN_OUTPUT_URI RETRAIN_SERVICE_ACCOUNT RETRAIN_CPU RETRAIN_MEMORY \
    RETRAIN_DEADLINE_SECONDS RETRAIN_PIPELINE_URL

# Only these names are substituted; any other $ in the template stays as it is.
# shellcheck disable=SC2016
names='${RETRAIN_JOB_NAME} ${RETRAIN_NAMESPACE} ${RETRAIN_MODEL} ${RETRAIN_RUN_ID} ${RETRAIN_REASONS}
${RETRAIN_IMAGE} ${RETRAIN_DATA_URI} ${RETRAIN_OUTPUT_URI} ${RETRAIN_SERVICE_ACCOUNT} ${RETRAIN_CPU}
${RETRAIN_MEMORY} ${RETRAIN_DEADLINE_SECONDS} ${RETRAIN_PIPELINE_URL}'
mkdir -p "$RETRAIN_OUT"
manifest="$RETRAIN_OUT/training-job.yaml"
[ -r "$RETRAIN_JOB_TEMPLATE" ] || fail "no Job template at $RETRAIN_JOB_TEMPLATE"
envsubst "$names" <"$RETRAIN_JOB_TEMPLATE" >"$manifest"
# shellcheck disable=SC2016
if left=$(grep -n '\${' "$manifest"); then
    fail "placeholders left in the rendered Job (not in train.sh's list?): $left"
fi

mkdir -p "$RETRAIN_TMP"
export KUBECONFIG="$RETRAIN_TMP/kubeconfig"
aws eks update-kubeconfig --name "$EKS_CLUSTER" --region "$AWS_REGION" --kubeconfig "$KUBECONFIG" >&2
log "applying Job $TRAINING_NAMESPACE/$RETRAIN_JOB_NAME (image $TRAINING_IMAGE, data $RETRAIN_DATA_URI)"
kubectl apply -f - <"$manifest"
# The cluster ends the Job at activeDeadlineSeconds; waiting 10 minutes longer only covers scheduling.
sh "$here/wait-job.sh" "$TRAINING_NAMESPACE" "$RETRAIN_JOB_NAME" "$((RETRAIN_DEADLINE_SECONDS + 600))"
