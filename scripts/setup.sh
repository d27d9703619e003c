#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: .venv, torch (CPU build), trustvision with its extras,
# and the MNIST and Fashion-MNIST data sets in the cache. A second run takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi

# Re-install only when the dependency list changed (the stamp is the hash of pyproject.toml).
stamp=".venv/.trustvision-setup-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # On these machines torch==2.13.0 is the CPU build on local disk; GPU users install their
    # CUDA build of torch into .venv before running this script.
    echo "setup: installing torch 2.13.0"
    .venv/bin/pip install -q torch==2.13.0
  fi
  echo "setup: installing trustvision with extras flower, compact, robust, sweep, dev"
  .venv/bin/pip install -q -e ".[flower,compact,robust,sweep,dev]"
  rm -f .venv/.trustvision-setup-*
  touch "$stamp"
fi

# Fashion-MNIST comes from a Debian package: apt needs its package lists once.
if command -v apt-get >/dev/null && ! apt-cache show dataset-fashion-mnist >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq; fi
fi
# `trustvision report` is tested in a real browser: headless Chromium from Debian (root only;
# elsewhere that one test says it was skipped and why, and CI, where CI is set, fails it).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "setup: installing chromium (headless, for the HTML report's browser test)"
  apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/trustvision data fetch mnist
.venv/bin/trustvision data fetch fashion-mnist
