#!/bin/sh
# Snapshots the run's data window: the last WINDOW_DAYS daily partitions of
# s3://DATA_BUCKET/DATA_PREFIX/dt=YYYY-MM-DD/ are synced (S3 to S3) under the run's own prefix, so
# training reads a fixed copy that later writes to the source cannot change. A retried job only
# copies what is missing. Today's partition is left out: it is still being written.
set -eu
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"
need MODEL_NAME RETRAIN_RUN_ID DATA_BUCKET DATA_PREFIX RUNS_PREFIX WINDOW_DAYS
check RETRAIN_RUN_ID "$RETRAIN_RUN_ID" "$RUN_ID_RE"
check WINDOW_DAYS "$WINDOW_DAYS" '[1-9][0-9]{0,2}'
src="s3://$DATA_BUCKET/$DATA_PREFIX"
dst="$(run_uri)/data"
check source "$src" "$S3_RE"
check destination "$dst" "$S3_RE"

mkdir -p "$RETRAIN_OUT"
now=$(date -u +%s)
days=""
i=1
while [ "$i" -le "$WINDOW_DAYS" ]; do
    day=$(date -u -d "@$((now - i * 86400))" +%Y-%m-%d)
    log "sync $src/dt=$day/ -> $dst/dt=$day/"
    aws s3 sync "$src/dt=$day/" "$dst/dt=$day/" --only-show-errors --no-progress
    days="$days${days:+,}\"$day\""
    i=$((i + 1))
done

# A day without data syncs nothing and is no error; a window without any is.
present=$(aws s3 ls "$dst/" | grep -c ' PRE dt=' || true)
[ "$present" -gt 0 ] || fail "no data in $src for the last $WINDOW_DAYS days"
[ "$present" -ge "$WINDOW_DAYS" ] || log "only $present of $WINDOW_DAYS days have data"
printf '{"data_uri":"%s/","days":[%s],"days_present":%s}\n' "$dst" "$days" "$present" >"$RETRAIN_OUT/data.json"
log "data window: $present day(s) in $dst/"
