#!/usr/bin/env bash
# Build llama.cpp's own binaries (llama-server, llama-bench, llama-cli) for this CPU
# (GGML_NATIVE=ON), as performance anchors for bench/anchors.py.
#
# Offline apart from the package registry: the llama.cpp sources come from the sdist of
# llama-cpp-python, which vendors them under vendor/llama.cpp. No git clone, no web UI
# download (the server is built with an empty UI; its HTTP API is all the bench needs).
#
# On a CPU with AMX, GGML_NATIVE=ON also builds ggml's AMX kernels; they crash (SIGSEGV in
# ggml_backend_amx_mul_mat) on SmolLM2's Q4_1 GGUF, so bench/anchors.py runs the binaries with
# weight repacking off (--no-repack / --repack 0), which skips them.
#
# Usage:
#   bash bench/build_llama_cpp.sh                 # -> ~/.cache/ponder/llama.cpp-native/bin/
#   LLAMA_CPP_VERSION=0.3.36 JOBS=2 bash bench/build_llama_cpp.sh
#   PONDER_CACHE=/some/dir bash bench/build_llama_cpp.sh
#
# Environment:
#   LLAMA_CPP_VERSION  llama-cpp-python sdist version (default 0.3.36; "latest" for the newest)
#   JOBS               parallel compile jobs (default 2)
#   PIP                the pip to download with (default .venv/bin/pip, else pip)
#   TARGETS            cmake targets (default "llama-server llama-bench llama-cli"; missing ones
#                      are skipped with a note)
set -euo pipefail

VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
TARGETS="${TARGETS:-llama-server llama-bench llama-cli}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${PONDER_CACHE:-$HOME/.cache/ponder}"
DEST="$CACHE/llama.cpp-native"
PIP="${PIP:-$ROOT/.venv/bin/pip}"
[ -x "$PIP" ] || PIP="pip"

mkdir -p "$DEST/src" "$DEST/bin"
cd "$DEST/src"

# 1. the sdist (only the package registry is used)
if [ "$VERSION" = "latest" ]; then spec="llama-cpp-python"; else spec="llama-cpp-python==$VERSION"; fi
sdist="$(ls llama_cpp_python-"${VERSION/latest/*}".tar.gz 2>/dev/null | head -1 || true)"
if [ -z "$sdist" ]; then
    "$PIP" download --no-deps --no-binary :all: "$spec" -d "$DEST/src"
    sdist="$(ls -t llama_cpp_python-*.tar.gz | head -1)"
fi
tree="${sdist%.tar.gz}"
[ -d "$tree" ] || tar xzf "$sdist"
SRC="$DEST/src/$tree/vendor/llama.cpp"
[ -f "$SRC/CMakeLists.txt" ] || { echo "no vendored llama.cpp in $sdist" >&2; exit 1; }

# 2. configure for this CPU
BUILD="$DEST/build"
cmake -S "$SRC" -B "$BUILD" -G "$(command -v ninja >/dev/null && echo Ninja || echo 'Unix Makefiles')" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DBUILD_SHARED_LIBS=OFF

# 3. build what exists (a target missing from this llama.cpp is skipped, not fatal)
available="$(cmake --build "$BUILD" --target help 2>/dev/null || true)"
built=()
for t in $TARGETS; do
    if grep -qE "(^|[ :.])$t([:  ]|$)" <<<"$available"; then
        cmake --build "$BUILD" --target "$t" -j "$JOBS"
        cp "$BUILD/bin/$t" "$DEST/bin/"
        built+=("$t")
    else
        echo "note: target $t does not exist in this llama.cpp; skipped" >&2
    fi
done

# 4. record what was built, for the bench's JSON
commit="$(cat "$DEST/src/$tree/.git/modules/vendor/llama.cpp/HEAD" 2>/dev/null || echo unknown)"
cat >"$DEST/build-info.json" <<EOF
{"llama_cpp_python_sdist": "$sdist", "llama_cpp_commit": "$commit", "ggml_native": true,
 "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "targets": "${built[*]}",
 "cpu": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"}
EOF
echo "built: ${built[*]} -> $DEST/bin"
"$DEST/bin/llama-server" --version 2>&1 | tail -2 || true
