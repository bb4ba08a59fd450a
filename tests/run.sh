#!/usr/bin/env bash
# The whole test suite: notebooks in sync and clean, every notebook run, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DROPOUT_RESIDUAL_DATA:-}" ] && [ -d ../shared/data ]; then
  export DROPOUT_RESIDUAL_DATA="$(cd ../shared/data && pwd)"
fi
export MPLBACKEND=Agg

echo "== nbdev_export leaves no diff (package in sync with the notebooks)"
nbdev_export
if [ -n "$(git status --porcelain -- dropout_residual)" ]; then
  git status --porcelain -- dropout_residual; git --no-pager diff --stat -- dropout_residual
  echo "FAIL: the package is out of sync with the notebooks: run nbdev_export and commit"; exit 1
fi
echo "== nbdev_clean leaves no diff (notebooks clean)"
nbdev_clean
if [ -n "$(git status --porcelain -- nbs)" ]; then
  git status --porcelain -- nbs
  echo "FAIL: notebooks are not clean: run nbdev_clean and commit"; exit 1
fi
echo "== nbdev_test (every notebook, skipping: notest slow cuda)"
nbdev_test --n_workers 2
echo "== pytest"
python -m pytest -q -p no:cacheprovider tests "$@"
