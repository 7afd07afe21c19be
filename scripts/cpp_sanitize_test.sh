#!/usr/bin/env bash
# Builds the C++ core and its test executable with -fsanitize=address,undefined in a
# separate build directory and runs the tests through ctest. Needs only a C++ compiler and
# the project venv (cmake and ninja are pip-installed into it); no Python in the test binary.
#
#   scripts/cpp_sanitize_test.sh            # build dir: build/asan
#   BUILD_DIR=/tmp/asan scripts/cpp_sanitize_test.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/asan}"

pick() {  # first of: the venv's tool, then the one on PATH
  if [[ -x "$ROOT/.venv/bin/$1" ]]; then echo "$ROOT/.venv/bin/$1"; else command -v "$1" || true; fi
}
CMAKE="$(pick cmake)"
CTEST="$(pick ctest)"
NINJA="$(pick ninja)"
[[ -n "$CMAKE" && -n "$CTEST" ]] || { echo "cmake/ctest not found (pip install cmake)" >&2; exit 2; }

GENERATOR=()
if [[ -n "$NINJA" ]]; then GENERATOR=(-G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA"); fi

# A cache from another generator cannot be reused.
if [[ -f "$BUILD_DIR/CMakeCache.txt" ]] && ! grep -q "CMAKE_GENERATOR:INTERNAL=${GENERATOR[1]:-Unix Makefiles}" "$BUILD_DIR/CMakeCache.txt"; then
  rm -rf "$BUILD_DIR"
fi

"$CMAKE" -S "$ROOT" -B "$BUILD_DIR" "${GENERATOR[@]}" \
  -DCMAKE_BUILD_TYPE=Debug \
  -DHEAN_SANITIZE=ON -DHEAN_BUILD_TESTS=ON -DHEAN_BUILD_PYTHON=OFF \
  -DCMAKE_CXX_FLAGS="-Werror"
"$CMAKE" --build "$BUILD_DIR" --target test_engine
cd "$BUILD_DIR"
"$CTEST" --output-on-failure
