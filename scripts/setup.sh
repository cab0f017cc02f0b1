#!/usr/bin/env bash
# Everything a fresh machine lacks: ffmpeg, redis-server, chromium, Ceph RGW and the deploy/
# checkers (apt-get), then a virtual
# environment in .venv with streamup and its test tools. Safe to run again: it skips what is there.
# The Python packages come from requirements.lock (pinned, hashed; `make lock` refreshes it).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# The status page's browser tests drive Debian's Chromium (Playwright cannot download one here).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# deploy/ checks: systemd-analyze verifies the unit, promtool checks and tests the alert rules.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# Ceph RGW, the second S3 server of the test suite (tests/rgw.py): monitor, OSD, gateway, admin.
command -v ceph-mon >/dev/null 2>&1 || missing+=(ceph-mon)
command -v ceph-osd >/dev/null 2>&1 || missing+=(ceph-osd)
command -v radosgw >/dev/null 2>&1 || missing+=(radosgw)
command -v radosgw-admin >/dev/null 2>&1 || missing+=(ceph-common)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]} with apt-get"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($python --version)"
  $python -m venv .venv
fi
stamp=.venv/.streamup-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || requirements.lock -nt $stamp ]]; then
  echo "setup: installing streamup and its test tools into .venv (from requirements.lock)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet --require-hashes -r requirements.lock
  .venv/bin/python -m pip install --quiet --no-deps -e .
  if ! .venv/bin/python -m pip check >/dev/null; then
    .venv/bin/python -m pip check >&2 || true
    echo "setup: requirements.lock does not cover pyproject.toml; run \`make lock\`" >&2
    exit 1
  fi
  touch "$stamp"
fi
