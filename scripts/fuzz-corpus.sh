#!/usr/bin/env bash
# Copies what `make fuzz FUZZTIME=...` found (the inputs that widened
# coverage, kept in Go's build cache) into testdata/fuzz of each package, so
# the corpus is committed and every `go test` runs it. At most 40 a target.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="$(go env GOCACHE)/fuzz/$(go list -m)"
for t in $(make -s -f Makefile --eval 'print-targets: ; @echo $(FUZZ_TARGETS)' print-targets); do
  pkg=$(echo "$t" | cut -d: -f1); name=$(echo "$t" | cut -d: -f2)
  src="$cache/${pkg#./}/$name"
  [ -d "$src" ] || src="$cache/$name"
  [ -d "$src" ] || continue
  dst="$pkg/testdata/fuzz/$name"
  mkdir -p "$dst"
  ls "$src" | head -n 40 | while read -r f; do cp -n "$src/$f" "$dst/$f"; done
  echo "$name: $(ls "$dst" | wc -l) inputs"
done
