#!/bin/sh
# AWS access for this job from its GitLab ID token (OIDC id_tokens, aud sts.amazonaws.com), never from
# long-lived keys. The token goes to $AWS_WEB_IDENTITY_TOKEN_FILE; with AWS_ROLE_ARN set, every AWS CLI
# call (and `aws eks get-token` behind kubectl) assumes the role with it and renews the session as
# needed, so a training wait of hours never outlives its credentials. Checked once here, up front.
set -eu
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"
need AWS_ID_TOKEN AWS_ROLE_ARN AWS_WEB_IDENTITY_TOKEN_FILE
check AWS_ROLE_ARN "$AWS_ROLE_ARN" 'arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+'
if [ -n "${AWS_ACCESS_KEY_ID:-}${AWS_SECRET_ACCESS_KEY:-}${AWS_PROFILE:-}" ]; then
    # They would take precedence over the web identity: refuse rather than use them silently.
    fail "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_PROFILE is set; this pipeline uses OIDC only"
fi

umask 077
mkdir -p "$(dirname "$AWS_WEB_IDENTITY_TOKEN_FILE")"
printf '%s' "$AWS_ID_TOKEN" >"$AWS_WEB_IDENTITY_TOKEN_FILE"
arn=$(aws sts get-caller-identity --query Arn --output text) ||
    fail "could not assume $AWS_ROLE_ARN with the job's ID token (does the role trust this project and ref?)"
log "AWS: acting as $arn"
