# shellcheck shell=sh
# Helpers for the pipeline scripts (sourced, POSIX sh: the BuildKit image has no bash).

RETRAIN_OUT="${RETRAIN_OUT:-retrain-out}"

log() { printf '[retrain] %s\n' "$*" >&2; }

# Ends the job. The reason is kept in $RETRAIN_OUT/failure.txt for the failure callback (stage.sh end).
fail() {
    log "ERROR: $*"
    mkdir -p "$RETRAIN_OUT" && printf '%s\n' "$*" >"$RETRAIN_OUT/failure.txt"
    exit 1
}

# need VAR...: each must be set and non-empty.
need() {
    for _name in "$@"; do
        eval "_value=\${$_name:-}"
        [ -n "$_value" ] || fail "$_name is not set"
    done
}

# check WHAT VALUE ERE: VALUE must match ^ERE$ on one line. Every value that goes into a manifest,
# a JSON body or an S3 path passes here first, so none can break out of where it is put.
check() {
    case "$2" in *'
'*) fail "$1 must be one line" ;;
    esac
    printf '%s\n' "$2" | grep -Eq "^($3)\$" || fail "$1 is not valid: '$2'"
}

# A JSON string literal: quotes and backslashes escaped, control characters turned into spaces.
json_str() {
    printf '"%s"' "$(printf '%s' "$1" | tr '\n\r\t' '   ' | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

# Used by the scripts that source this file.
# shellcheck disable=SC2034
RUN_ID_RE='[a-z0-9][a-z0-9-]{0,39}'
# shellcheck disable=SC2034
MODEL_RE='[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?'
# s3://bucket/key-prefix with the characters S3 keys here are made of.
# shellcheck disable=SC2034
S3_RE='s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._=-]+)*/?'

# Where this run keeps its data snapshot and the training output.
run_uri() {
    printf 's3://%s/%s/%s/%s' "$DATA_BUCKET" "$RUNS_PREFIX" "$MODEL_NAME" "$RETRAIN_RUN_ID"
}
