#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: ruff check, mypy, pytest (unit, integration, ros, build).
# Integration tests need root (network namespaces, TUN): they run when this script runs as root.
# Extra arguments go to pytest, e.g. `./scripts/test.sh test/unit -k address`.
# Exits non-zero when any check fails; every check runs even after an earlier one failed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HUSARNET_ROS_VENV:-$REPO/.venv}

# Debian packages only the tests need, not the product (so not in setup.sh, which the demo runs too): the
# Dashboard tests start their own PostgreSQL server on 127.0.0.1 (never the cluster this package may start on
# port 5432) and drive Chromium through playwright (husarnet_ros/testing/postgres.py, browser.py).
TEST_APT_PACKAGES=(postgresql chromium)
install_test_packages() {
  local missing=() pkg
  for pkg in "${TEST_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "[test] NOTE: missing Debian packages ${missing[*]}: the Dashboard tests that need them are skipped;" \
        "install them (apt-get install ${missing[*]}) or run this script as root once"
      return 0
    fi
    sudo=(sudo)
  fi
  echo "[test] installing Debian packages for the tests: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null
}

"$REPO/scripts/setup.sh"
install_test_packages
cd "$REPO"
PY="$VENV/bin/python"

failed=()
run_check() {
  local name=$1; shift
  local t0=$SECONDS
  printf '\n=== %s ===\n' "$name"
  if "$@"; then
    printf '=== %s: ok (%d s)\n' "$name" $(( SECONDS - t0 ))
  else
    printf '=== %s: FAILED (%d s)\n' "$name" $(( SECONDS - t0 ))
    failed+=("$name")
  fi
}

run_pytest() {
  local rc=0
  "$PY" -m pytest "$@" || rc=$?
  # Exit status 5: no test was collected. As root (HUSARNET_ROS_STRICT=1) every test must run, so a run that ran
  # none is a failure; otherwise it is the integration tests deselected above for a non-root user.
  if [ "$rc" -eq 5 ] && [ "${HUSARNET_ROS_STRICT:-0}" != 1 ]; then
    echo "pytest: no tests were collected for this selection (not counted as a failure when not root)"
    return 0
  fi
  return "$rc"
}

pytest_args=("$@")
if [ "$(id -u)" -eq 0 ]; then
  # As root every marker runs; a missing kernel feature is then an error, not a silent skip.
  export HUSARNET_ROS_STRICT=1
else
  echo "NOTE: not root: integration tests (network namespaces, TUN) are skipped; run as root to include them."
  pytest_args=(-m "not integration" "${pytest_args[@]}")
fi

run_check "ruff check" "$VENV/bin/ruff" check .
run_check "mypy (Python 3.10 and later)" "$VENV/bin/mypy"
# Humble runs Python 3.10: no newer syntax, module or member may slip in (mypy and ruff target 3.10 too).
run_check "vermin (Python 3.10 and later)" "$VENV/bin/vermin" --no-tips --violations --eval-annotations \
  -t=3.10- husarnet_ros test bench launch setup.py
run_check "pytest" run_pytest "${pytest_args[@]}"

if [ ${#failed[@]} -gt 0 ]; then
  printf '\nFAILED: %s\n' "${failed[*]}"
  exit 1
fi
printf '\nall checks passed\n'
