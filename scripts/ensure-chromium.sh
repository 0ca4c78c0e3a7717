#!/bin/sh
# Make sure headless Chromium is there for the memory web page's browser tests (tests/memory/test_web.py).
# Idempotent: does nothing when chromium is on PATH; installs Debian's package when run as root with
# apt-get; otherwise says the browser tests will be skipped. Always exits 0: a missing browser only
# skips those tests, it never fails `make test`.
set -u

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    if apt-get update -qq && apt-get install -y -qq chromium >/dev/null; then
        command -v chromium >/dev/null 2>&1 && exit 0
    fi
    echo "ensure-chromium: installing chromium with apt-get failed; the browser tests will be skipped" >&2
    exit 0
fi
echo "ensure-chromium: no chromium on PATH and cannot apt-get install it (needs root); the browser tests will be skipped" >&2
exit 0
