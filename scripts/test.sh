#!/usr/bin/env bash
# The whole test suite, in the order nbdev projects use: notebooks and package in step, lint,
# notebook tests, tutorials, then pytest. Called by `make test` with the venv first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "notebooks and marble_nb/ are in step (nbdev_clean, nbdev_export leave no diff)"
nbdev_clean
nbdev_export
if [ -n "$(git status --porcelain -- nbs marble_nb)" ]; then
    git status --porcelain -- nbs marble_nb
    echo "nbdev_clean/nbdev_export changed the files above: edit the notebooks, run 'make export', commit both." >&2
    exit 1
fi

step "ruff: lint exported code, tests, benchmarks; format of notebooks, tests, benchmarks"
ruff check marble_nb tests benchmarks scripts
ruff format --check nbs tests benchmarks

step "nbdev_test nbs/"
nbdev_test --path nbs

if compgen -G "tutorials/*.ipynb" >/dev/null; then
    step "tutorials/"
    nbdev_test --path tutorials --do_print
fi

step "chromium for the browser test"
bash scripts/install_browser.sh

step "pytest tests/"
set +e
python -m pytest tests
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests"
    status=0
fi
exit "$status"
