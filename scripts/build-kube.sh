#!/usr/bin/env bash
# Builds kube-apiserver and kubectl from the Go module proxy into the cache
# (the Kubernetes tests run a real control plane: etcd + kube-apiserver).
# k8s.io/kubernetes lists its staging modules as v0.0.0: each is replaced
# by its published version. About 11 minutes cold on 2 cores. The
# programs to build follow the versions (default: kube-apiserver kubectl).
set -euo pipefail
cache=$1 version=$2 staging=$3
shift 3
programs=("$@")
[ $# -gt 0 ] || programs=(kube-apiserver kubectl)
dir="$cache/k8s-build"
mkdir -p "$dir" "$cache/bin"
cd "$dir"
go mod download -json "k8s.io/kubernetes@$version" >/dev/null
mod=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$version.mod
{
  echo 'module drctl.local/k8sbuild'
  echo
  echo 'go 1.26'
  echo
  echo "require k8s.io/kubernetes $version"
  echo
  grep -E '^\s+k8s.io/[a-z-]+ v0.0.0$' "$mod" | awk '{print $1}' | sort -u | while read -r m; do echo "replace $m => $m $staging"; done
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
GOFLAGS=-mod=mod go mod tidy
for p in "${programs[@]}"; do
  GOFLAGS=-mod=mod go build -o "$cache/bin/$p" "k8s.io/kubernetes/cmd/$p"
done
