#!/bin/sh
# Builds the serving image with rootless BuildKit and pushes it to ECR; the image is then known by
# its digest, never by a tag. The trained model (the run's output/model/) reaches the Dockerfile as
# the named build context `model`:  COPY --from=model . /opt/model/
# Writes $RETRAIN_OUT/image: <registry>/<repository>@sha256:<digest>.
set -eu
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"
need MODEL_NAME RETRAIN_RUN_ID DATA_BUCKET RUNS_PREFIX AWS_REGION ECR_REGISTRY ECR_REPOSITORY \
    BUILD_CONTEXT BUILD_DOCKERFILE RETRAIN_TMP
check RETRAIN_RUN_ID "$RETRAIN_RUN_ID" "$RUN_ID_RE"
check ECR_REGISTRY "$ECR_REGISTRY" '[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?'
check ECR_REPOSITORY "$ECR_REPOSITORY" '[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*'
model_uri="$(run_uri)/output/model/"
check model "$model_uri" "$S3_RE"
[ -f "$BUILD_DOCKERFILE" ] || fail "no Dockerfile at $BUILD_DOCKERFILE"

mkdir -p "$RETRAIN_OUT" "$RETRAIN_TMP/model"
aws s3 sync "$model_uri" "$RETRAIN_TMP/model/" --only-show-errors --no-progress
[ -n "$(ls -A "$RETRAIN_TMP/model")" ] || fail "the training Job left no model in $model_uri"

# buildctl reads registry credentials from $DOCKER_CONFIG/config.json; it lives outside the build
# context and the project directory, and goes away with $RETRAIN_TMP in after_script.
export DOCKER_CONFIG="$RETRAIN_TMP/docker"
(umask 077 && mkdir -p "$DOCKER_CONFIG")
password=$(aws ecr get-login-password --region "$AWS_REGION") || fail "could not get an ECR login for $AWS_REGION"
auth=$(printf 'AWS:%s' "$password" | base64 | tr -d '\n')
(umask 077 && printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$ECR_REGISTRY" "$auth" >"$DOCKER_CONFIG/config.json")

repo="$ECR_REGISTRY/$ECR_REPOSITORY"
metadata="$RETRAIN_OUT/build-metadata.json"
rm -f "$metadata"
log "building $repo:run-$RETRAIN_RUN_ID"
buildctl-daemonless.sh build \
    --frontend dockerfile.v0 \
    --local context="$BUILD_CONTEXT" \
    --local dockerfile="$(dirname "$BUILD_DOCKERFILE")" \
    --opt filename="$(basename "$BUILD_DOCKERFILE")" \
    --local model="$RETRAIN_TMP/model" \
    --opt context:model=local:model \
    --opt label:retrain.model="$MODEL_NAME" \
    --opt label:retrain.run-id="$RETRAIN_RUN_ID" \
    --output "type=image,name=$repo:run-$RETRAIN_RUN_ID,push=true" \
    --metadata-file "$metadata"

digest=$(tr -d ' \t\r\n' <"$metadata" | sed -n 's/.*"containerimage\.digest":"\(sha256:[0-9a-f]\{64\}\)".*/\1/p')
[ -n "$digest" ] || fail "no containerimage.digest in $metadata"
printf '%s@%s\n' "$repo" "$digest" >"$RETRAIN_OUT/image"
log "pushed $repo@$digest"
