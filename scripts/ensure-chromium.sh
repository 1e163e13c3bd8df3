#!/usr/bin/env bash
# Debian's chromium for the report's browser test (tests/test_report.py drives it through Playwright; no
# `playwright install` browser download). Installs it with apt-get when running as root; otherwise says how and
# exits 0, and that test then fails with the same advice.
set -uo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: installing Debian's chromium for the report's browser test (apt-get install chromium)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
        echo "ensure-chromium: install failed; refreshing the package lists (apt-get update) and retrying"
        apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium >/dev/null
    fi
    if command -v chromium >/dev/null 2>&1; then
        exit 0
    fi
    echo "ensure-chromium: could not install chromium; tests/test_report.py will fail" >&2
    exit 0
fi

echo "ensure-chromium: chromium is not installed; tests/test_report.py needs it." >&2
echo "  As root: apt-get install -y --no-install-recommends chromium   (Debian/Ubuntu package 'chromium')" >&2
exit 0
