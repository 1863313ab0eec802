#!/usr/bin/env bash
# Builds, on this machine, the wheels the validation run installs on the GPU machine,
# into .whl/ at the repository root (ignored by git; the device call carries it):
# ai-bottleneck itself, and the requirements that machine's image lacks (bcrypt,
# orjson, msgspec), as x86-64 wheels for its Python 3.12. docs/validation.md says when to run it.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl
mkdir .whl
python3 -m pip wheel -q --no-deps -w .whl .
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "bcrypt>=4" "orjson>=3.8" \
  "msgspec>=0.18"
ls -l .whl
du -sh .whl
