#!/bin/sh
# Installs Debian's chromium for the status page screenshot test, only when it is missing.
set -eu
command -v chromium >/dev/null 2>&1 && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: chromium -- install it with your package manager, or set CHROMIUM_BIN" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "missing: chromium -- run as root or: sudo apt-get install chromium" >&2
    exit 1
fi
echo "installing: chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
