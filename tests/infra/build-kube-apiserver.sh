#!/usr/bin/env bash
# Builds kube-apiserver from Debian's `kubernetes` source package (1.20, with vendor/) and caches the binary in
#   ${XDG_CACHE_HOME:-~/.cache}/retrain-controller/kube-apiserver-<version>/kube-apiserver
# for the integration tests; installs etcd (Debian's etcd-server) and openssl. Skips whatever is already done.
# The first build takes 4-5 minutes on 2 cores (make alone 200-260 s); it needs root (apt) on Debian.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-1.20.2}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/retrain-controller"
OUT="$CACHE/kube-apiserver-$KUBE_VERSION"
SRC_LIST=/etc/apt/sources.list.d/retrain-controller-deb-src

log() { echo "build-kube-apiserver: $*"; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "$* -- run this as root (it uses apt-get)" >&2
        exit 1
    fi
}

apt_install() {
    [ $# -eq 0 ] && return 0
    need_root "missing: $*"
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

apt_updated=""
apt_update() {
    [ -n "$apt_updated" ] && return 0
    log "apt-get update"
    apt-get update -qq
    apt_updated=1
}

# etcd and openssl (keys, serving cert) first: cheap, and the tests need them even when the apiserver is cached.
runtime=()
command -v etcd >/dev/null 2>&1 || [ -n "${ETCD_BIN:-}" ] || runtime+=(etcd-server)
command -v openssl >/dev/null 2>&1 || runtime+=(openssl)
if [ ${#runtime[@]} -gt 0 ]; then
    need_root "missing: ${runtime[*]}"
    apt_update
    apt_install "${runtime[@]}"
fi

if [ -n "${KUBE_APISERVER:-}" ] && [ -x "$KUBE_APISERVER" ]; then
    log "using \$KUBE_APISERVER=$KUBE_APISERVER"
    exit 0
fi
if [ -x "$OUT/kube-apiserver" ]; then
    log "cached: $OUT/kube-apiserver"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "kube-apiserver is built from Debian's kubernetes source package; this machine has no apt-get" >&2
    exit 1
fi
need_root "building kube-apiserver needs deb-src and golang-go"

# deb-src entries mirror the machine's own Debian sources (same URIs, suites, components); no host is hard-coded.
# shellcheck source=/dev/null
. /etc/os-release
codename="${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}"
if [ ! -e "$SRC_LIST.sources" ] && [ ! -e "$SRC_LIST.list" ]; then
    shopt -s nullglob
    deb822=(/etc/apt/sources.list.d/*.sources)
    oneline=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
    # deb822: copy every stanza whose Types has `deb` and whose Suites are this release's, as Types: deb-src.
    stanzas="$(awk -v cn="$codename" '
        function flush() {
            if (n && has_deb && ours && !off) { printf "%s", (out ? "\n" : ""); out = 1
                for (i = 1; i <= n; i++) print lines[i] }
            n = 0; has_deb = 0; ours = 0; off = 0 }
        FNR == 1 { flush() }
        /^[ \t]*$/ { flush(); next }
        /^[ \t]*#/ { next }
        tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") has_deb = 1
                                  lines[++n] = "Types: deb-src"; next }
        tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == cn || index($i, cn "-") == 1) ours = 1 }
        tolower($1) == "enabled:" && tolower($2) == "no" { off = 1 }
        { lines[++n] = $0 }
        END { flush() }' ${deb822[@]+"${deb822[@]}"} </dev/null)"
    # one-line format: `deb [opts] URI suite comps` -> `deb-src [opts] URI suite comps` for this release.
    lines="$(for f in ${oneline[@]+"${oneline[@]}"}; do if [ -f "$f" ]; then cat "$f"; fi; done |
        awk -v cn="$codename" '$1 == "deb" {
            s = ($2 ~ /^\[/) ? 0 : 3; if (!s) for (i = 2; i <= NF; i++) if ($i ~ /\]$/) { s = i + 2; break }
            if (s && ($s == cn || index($s, cn "-") == 1)) { $1 = "deb-src"; print } }')"
    if [ -n "$stanzas" ]; then
        printf '%s\n' "$stanzas" >"$SRC_LIST.sources"
        log "enabled deb-src in $SRC_LIST.sources"
    fi
    if [ -n "$lines" ]; then
        printf '%s\n' "$lines" >"$SRC_LIST.list"
        log "enabled deb-src in $SRC_LIST.list"
    fi
    if [ -z "$stanzas$lines" ]; then
        echo "found no Debian '$codename' apt source to derive a deb-src entry from" >&2
        exit 1
    fi
    apt_updated=""
fi
apt_update

missing=()
command -v go >/dev/null 2>&1 || missing+=(golang-go)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v dpkg-source >/dev/null 2>&1 || missing+=(dpkg-dev)
command -v make >/dev/null 2>&1 || missing+=(make)
apt_install ${missing[@]+"${missing[@]}"}

mkdir -p "$CACHE"
build="$(mktemp -d "$CACHE/build.XXXXXX")"
trap 'rm -rf "$build"' EXIT  # the tree and Go's build cache are ~2 GB; only the binary is kept
cd "$build"
log "apt-get source kubernetes in $build"
apt-get source -qq kubernetes >/dev/null 2>source.log || { cat source.log >&2; exit 1; }
tree="$(find . -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n 1)"
[ -n "$tree" ] || { echo "apt-get source kubernetes gave no kubernetes-* directory" >&2; exit 1; }
cd "$tree"
log "source tree: $(basename "$tree")"

mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
log "make WHAT=cmd/kube-apiserver (4-5 minutes on 2 cores)"
start=$(date +%s)
GOPATH="$PWD/.go" GOCACHE="$build/go-cache" CGO_ENABLED=0 \
    KUBE_GIT_VERSION="v$KUBE_VERSION" KUBE_GIT_TREE_STATE=clean \
    make WHAT=cmd/kube-apiserver
log "built in $(($(date +%s) - start)) s"

mkdir -p "$OUT"
cp _output/bin/kube-apiserver "$OUT/kube-apiserver.tmp"
mv "$OUT/kube-apiserver.tmp" "$OUT/kube-apiserver"  # atomic: a half-copied binary never looks cached
log "done: $OUT/kube-apiserver ($(du -h "$OUT/kube-apiserver" | cut -f1))"
