#!/usr/bin/env bash
# One set-up for a fresh Debian machine with Python 3.11 and no ROS install:
# .venv/ with the pinned requirements, this package installed editable, and the
# package's messages generated with CMake (rosidl) and installed into the venv.
# Idempotent: each step records a hash of its inputs and is skipped when they are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.venv
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3

step_done() { [ -f "$venv/.stamp-$1" ] && [ "$(cat "$venv/.stamp-$1")" = "$2" ]; }
mark_done() { echo "$2" > "$venv/.stamp-$1"; }

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"

requirements_hash=$(sha256sum requirements.txt setup.py | sha256sum | cut -c1-16)
if ! step_done requirements "$requirements_hash"; then
  echo "setup: installing requirements into $venv"
  pip install --quiet -r requirements.txt
  pip install --quiet --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
  mark_done requirements "$requirements_hash"
fi

mkdir -p build
messages_hash=$( (cat msg/*.msg srv/*.srv CMakeLists.txt package.xml; echo "$requirements_hash") | sha256sum | cut -c1-16)
if ! step_done messages "$messages_hash"; then
  echo "setup: generating messages with CMake"
  # The wheels' CMake configs name include folders of the manylinux image they were built
  # in; CMake refuses to generate while those do not exist. Empty folders are enough: the
  # real headers come from the Python that CMake finds.
  for dir in /opt/python/cp311-cp311/include/python3.11 \
             /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include; do
    [ -d "$dir" ] || mkdir -p "$dir" 2>/dev/null || sudo mkdir -p "$dir"
  done
  export AMENT_PREFIX_PATH=$venv CMAKE_PREFIX_PATH=$venv
  cmake -S . -B build/msgs -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$venv/bin/python" \
    -DINSTALL_PYTHON_PACKAGE=OFF -DBUILD_TESTING=OFF > build/cmake.log 2>&1 \
    && cmake --build build/msgs -j"$(nproc)" >> build/cmake.log 2>&1 \
    && cmake --install build/msgs >> build/cmake.log 2>&1 \
    || { tail -40 build/cmake.log; echo "setup: message generation failed; full log in build/cmake.log" >&2; exit 1; }
  # rosidl writes an empty box_segmentation/__init__.py beside the generated messages in the
  # venv, which would shadow this source tree. Without it that folder is a plain portion
  # that box_segmentation/__init__.py extends its __path__ onto.
  rm -f "$venv"/lib/python3*/site-packages/box_segmentation/__init__.py
  mark_done messages "$messages_hash"
fi

python -c "from box_segmentation.msg import BoxMasks" \
  || { echo "setup: box_segmentation.msg does not import after set-up" >&2; exit 1; }
echo "setup: ready ($venv)"
