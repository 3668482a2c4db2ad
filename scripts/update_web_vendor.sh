#!/usr/bin/env bash
# Refresh the canvas library vendored under web/vendor/litegraph/ from npm (only this script needs npm).
#   scripts/update_web_vendor.sh            # the pinned version below
#   scripts/update_web_vendor.sh 0.17.3     # another version: re-run tests/test_web_canvas.py afterwards
# Chisel needs no Node.js to run or test: the built ES module, its stylesheet and its MIT license are committed.
set -euo pipefail
PKG="@comfyorg/litegraph"
VERSION="${1:-0.17.2}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$HERE/web/vendor/litegraph"
command -v npm >/dev/null || { echo "npm is needed to refresh the vendored files" >&2; exit 1; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent "$PKG@$VERSION" >/dev/null)
tar xzf "$TMP"/*.tgz -C "$TMP"
P="$TMP/package"
test -f "$P/dist/litegraph.es.js" || { echo "unexpected package layout: no dist/litegraph.es.js" >&2; exit 1; }
mkdir -p "$DEST"
cp "$P/dist/litegraph.es.js" "$DEST/litegraph.es.js"
cp "$P/dist/css/litegraph.css" "$DEST/litegraph.css"
cp "$P/LICENSE" "$DEST/LICENSE"
SHA="$(cd "$TMP" && sha256sum ./*.tgz | cut -d' ' -f1)"
printf '%s@%s\nnpm tarball sha256 %s\nfiles: dist/litegraph.es.js, dist/css/litegraph.css, LICENSE (MIT)\n' \
  "$PKG" "$VERSION" "$SHA" > "$DEST/VERSION"
echo "vendored $PKG@$VERSION into ${DEST#$HERE/}"
