#!/usr/bin/env bash
# Installs the Debian packages that the tests (and, with --bench, the benchmarks) drive:
# real SIP user agents, SIPp (and socat, its TLS in the RFC 4575 interop test), PostgreSQL
# (the tests start a throwaway cluster with its initdb when no server runs on
# 127.0.0.1:5432; tests/backends.py), HAProxy (the balancer
# in front of two nodes in tests/test_multinode.py; the tests start their own), SoftHSM2
# (the PKCS#11 HSM of the Customer Key tests; tests/hsm.py makes its tokens in a temp dir),
# LibreOffice Impress (the WCS converts shared decks to PDF with it, docs/protocol.md §9.4;
# tests/test_decks.py), node, npm and Debian chromium (`make web` builds the web client with
# npm; the browser tests drive chromium headless through playwright-core, which never
# downloads a browser), and the baselines.
# Service start-up is suppressed during the install (policy-rc.d), so nothing listens on
# ports 80/5060/5432 afterwards. Without root or apt it only warns: the tests that need a
# missing SIP tool or HAProxy skip and say why; the PostgreSQL tests fail and say so, unless
# WEBCONF_TEST_BACKENDS=sqlite.
set -u
packages="baresip-core linphone-cli sip-tester socat postgresql haproxy softhsm2 libreoffice-impress chromium nodejs"
if [ "${1:-}" = "--bench" ]; then
  packages="$packages kamailio kamailio-tls-modules nginx-light wrk nghttp2-client"
fi
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# Debian ships npm apart from nodejs (NodeSource's nodejs includes it): only when it is absent.
command -v npm >/dev/null 2>&1 || missing="$missing npm"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: cannot install$missing (need root and apt-get); tests using them will skip" >&2
  exit 0
fi
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
fi
export DEBIAN_FRONTEND=noninteractive
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; } >/tmp/webconf-system-deps.log 2>&1 \
  || echo "system-deps: apt-get failed for$missing (see /tmp/webconf-system-deps.log); tests using them will skip" >&2
[ "$created_policy" = 1 ] && rm -f "$policy"
exit 0
