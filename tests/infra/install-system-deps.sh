#!/bin/sh
# Installs the Debian packages the project needs, only when they are missing.
#   install-system-deps.sh base   -> python3 with venv
#   install-system-deps.sh test   -> base + Prometheus and Alertmanager (real ones for the integration tests)
#   install-system-deps.sh demo   -> base + Prometheus and Alertmanager (what `make demo` runs)
set -eu

want="${1:-base}"
missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }

need python3 python3
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$missing python3-venv"
if [ "$want" = test ] || [ "$want" = demo ]; then
    need prometheus prometheus
    need promtool prometheus
    need prometheus-alertmanager prometheus-alertmanager
    need amtool prometheus-alertmanager
fi
missing="$(echo "$missing" | tr ' ' '\n' | sort -u | tr '\n' ' ')"
[ -z "${missing# }" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing:$missing -- install them with your package manager (this script knows apt only)," >&2
    echo "or point PROMETHEUS_BIN / ALERTMANAGER_BIN at the binaries" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "missing:$missing -- run as root or: sudo apt-get install$missing" >&2
    exit 1
fi
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
