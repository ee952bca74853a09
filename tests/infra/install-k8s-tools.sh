#!/bin/sh
# Installs kubectl for tests/integration/test_k8s_manifests.py (`kubectl kustomize`, `kubectl auth can-i`) when
# there is none: Debian 12's `kubernetes-client` (kubectl 1.20.2, the same release as the test API server; its
# built-in kustomize renders k8s/). Safe to run again. Set KUBECTL to use another kubectl instead.
set -eu

if [ -n "${KUBECTL:-}" ] || command -v kubectl >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "kubectl missing -- install it (as root: apt-get install kubernetes-client)" >&2
    exit 1
fi
echo "installing Debian package: kubernetes-client"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
kubectl version --client
