#!/usr/bin/env bash
# vendor/h2 is the h2 crate exactly as published on crates.io plus
# vendor/h2.patch, and nothing else (vendor/README.md says why).
#
#   vendor/h2.sh check           verify that: the release named in
#                                vendor/h2/Cargo.toml is downloaded, its
#                                checksum checked against the crates.io
#                                index, the patch applied, and the result
#                                compared with vendor/h2 (CI runs this)
#   vendor/h2.sh update VERSION  replace vendor/h2 with release VERSION
#                                plus the patch (fails, changing nothing,
#                                if the patch no longer applies)
#   vendor/h2.sh diff            rewrite vendor/h2.patch from vendor/h2
#                                after changing it by hand
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

current_version() {
  sed -n 's/^version = "\(.*\)"$/\1/p' "$here/h2/Cargo.toml" | head -1
}

# Unpacks release $1, checksum verified, as $tmp/h2-$1.
fetch() {
  local version=$1 want got
  want=$(curl -sSf https://index.crates.io/2/h2 | python3 -c '
import json, sys
for line in sys.stdin:
    entry = json.loads(line)
    if entry["vers"] == sys.argv[1]:
        print(entry["cksum"])
' "$version")
  if [ -z "$want" ]; then
    echo "h2 $version is not on crates.io" >&2
    exit 1
  fi
  curl -sSfL -o "$tmp/h2.crate" "https://static.crates.io/crates/h2/h2-$version.crate"
  got=$(sha256sum "$tmp/h2.crate" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "h2 $version: checksum $got, crates.io says $want" >&2
    exit 1
  fi
  tar -xzf "$tmp/h2.crate" -C "$tmp"
  # Cargo's own marker of an unpacked crate, not part of the release.
  rm -f "$tmp/h2-$version/.cargo-ok"
}

case "${1:-}" in
  check)
    version=$(current_version)
    fetch "$version"
    patch -s -p1 -d "$tmp/h2-$version" <"$here/h2.patch"
    if ! diff -r "$tmp/h2-$version" "$here/h2"; then
      echo "vendor/h2 is not h2 $version plus vendor/h2.patch (after a change by hand: vendor/h2.sh diff)" >&2
      exit 1
    fi
    echo "vendor/h2 is h2 $version plus vendor/h2.patch"
    ;;
  update)
    version=${2:?usage: vendor/h2.sh update VERSION}
    fetch "$version"
    if ! patch -s -p1 -d "$tmp/h2-$version" <"$here/h2.patch"; then
      echo "vendor/h2.patch does not apply to h2 $version; vendor/h2 is unchanged" >&2
      exit 1
    fi
    rm -rf "$here/h2"
    mv "$tmp/h2-$version" "$here/h2"
    echo "vendor/h2 is now h2 $version plus vendor/h2.patch"
    ;;
  diff)
    version=$(current_version)
    fetch "$version"
    mv "$tmp/h2-$version" "$tmp/a"
    ln -s "$here/h2" "$tmp/b"
    rc=0
    (cd "$tmp" && diff -ruN a b) >"$tmp/h2.patch" || rc=$?
    if [ "$rc" -gt 1 ]; then
      exit "$rc"
    fi
    # Without the files' dates, so the patch changes only when the code does.
    sed -E 's/^((---|\+\+\+) [^\t]*)\t.*/\1/' "$tmp/h2.patch" >"$here/h2.patch"
    echo "vendor/h2.patch rewritten against h2 $version"
    ;;
  *)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
