#!/usr/bin/env bash
# Installs what the browser test (tests/test_browser.py) needs when it is missing: Debian's chromium.
# The Python side (jupyterlab, playwright) comes with the `browser` extra in requirements/dev.txt.
# Never fails the test run: without chromium the browser test skips and says why.
set -uo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
        || echo "could not install chromium: the browser test will skip" >&2
else
    echo "chromium is missing and cannot be installed here (needs root and apt-get): the browser test will skip" >&2
fi
exit 0
