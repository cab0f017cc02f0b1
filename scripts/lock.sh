#!/usr/bin/env bash
# Pins every dependency of pyproject.toml, with hashes, then installs the result into .venv:
#   requirements.lock          the agent + demo + test tools: what `make setup`, `make test` and
#                              CI install
#   requirements-runtime.lock  the agent alone, the same versions: what the Docker image installs
# One resolution for every platform and Python >= 3.11 (uv's --universal), so the lock made here
# also serves the python:3.12 image and an ARM recorder. Pins already in the files are kept;
# `make lock UPGRADE=1` moves everything to the newest releases.
# After adding or changing a dependency in pyproject.toml: `make lock`, then commit both files.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || $python -m venv .venv
if [[ ! -x .venv/bin/uv ]]; then
  # Bootstrap with the uv the lock pins (any uv when there is no lock yet).
  pinned=$(sed -n 's/^uv==\([^ ]*\).*/\1/p' requirements.lock 2>/dev/null || true)
  .venv/bin/python -m pip install --quiet "uv${pinned:+==$pinned}"
fi

flags=(--universal --python-version 3.11 --generate-hashes --quiet
       --custom-compile-command "make lock")
[[ -n ${UPGRADE:-} ]] && flags+=(--upgrade)
.venv/bin/uv pip compile pyproject.toml --extra dev "${flags[@]}" -o requirements.lock
# Constrained by the full lock, so the image runs exactly the versions the tests ran.
.venv/bin/uv pip compile pyproject.toml -c requirements.lock "${flags[@]}" \
  -o requirements-runtime.lock
echo "lock: requirements.lock and requirements-runtime.lock written"
bash scripts/setup.sh
