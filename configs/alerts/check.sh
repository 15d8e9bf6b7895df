#!/usr/bin/env bash
# Checks the Prometheus rules with promtool: syntax (`promtool check rules`) and the unit tests in
# parity.rules.test.yml (`promtool test rules`).
#
#   bash configs/alerts/check.sh            # finds or fetches promtool, then checks
#   PROMTOOL=/path/to/promtool bash configs/alerts/check.sh
#
# promtool is looked for in $PROMTOOL, on PATH, then in the cache
# (${XDG_CACHE_HOME:-~/.cache}/parity/promtool).  If none is found it is taken from Debian's
# `prometheus` package: `apt-get download prometheus` (no install, no service started) and only
# /usr/bin/promtool is extracted into the cache.  PyPI has no package that ships promtool.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/parity"

find_promtool() {
  if [ -n "${PROMTOOL:-}" ] && [ -x "$PROMTOOL" ]; then echo "$PROMTOOL"; return; fi
  if command -v promtool >/dev/null 2>&1; then command -v promtool; return; fi
  if [ -x "$cache/promtool" ]; then echo "$cache/promtool"; return; fi
  command -v apt-get >/dev/null 2>&1 || { echo "promtool not found and apt-get is not available" >&2; return 1; }
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) || {
    apt-get update >/dev/null 2>&1 || true
    (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1)
  } || { echo "could not download Debian's prometheus package" >&2; return 1; }
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  mkdir -p "$cache"
  install -m 0755 "$tmp/x/usr/bin/promtool" "$cache/promtool"
  echo "$cache/promtool"
}

promtool="$(find_promtool)"
"$promtool" --version 2>&1 | head -1
"$promtool" check rules "$here/parity.rules.yml"
(cd "$here" && "$promtool" test rules parity.rules.test.yml)
