#!/bin/sh
# Hands the new image, pinned by digest, and its offline metrics to the controller; the run then
# moves on to deploying. Production's numbers go along as production_<name>.
set -eu
here=$(dirname "$0")
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"
[ -s "$RETRAIN_OUT/image" ] || fail "no $RETRAIN_OUT/image: the build job did not run or pushed nothing"
[ -s "$RETRAIN_OUT/evaluation.json" ] || fail "no $RETRAIN_OUT/evaluation.json: the evaluate job did not run"
image=$(head -n 1 "$RETRAIN_OUT/image")
metrics=$(jq -c '.candidate + (.production | with_entries(.key |= "production_" + .))' \
    "$RETRAIN_OUT/evaluation.json") || fail "cannot read the metrics in $RETRAIN_OUT/evaluation.json"
sh "$here/callback.sh" image "$image" "$metrics" || fail "the controller did not take the image $image"
