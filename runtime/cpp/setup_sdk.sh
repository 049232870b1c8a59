#!/usr/bin/env bash
# Assemble what the C++ runtime builds against, under build/ort-sdk/ (ignored by git); idempotent.
#
#   build/ort-sdk/include/onnxruntime_*.h   ONNX Runtime's official C/C++ headers (C API 29, ORT 1.29), from
#                                           the MIT npm package com.github.asus4.onnxruntime (no registry
#                                           reachable here ships the official SDK archive)
#   build/ort-sdk/include/nlohmann/         nlohmann_json (PyPI nlohmann-json, header-only)
#   build/ort-sdk/lib/libonnxruntime.so*    the venv's onnxruntime wheel library (+ its SONAME link)
#
# Also installs cmake + ninja into the venv when missing, and OpenSSL's headers (Debian libssl-dev) when
# they are missing and apt-get can run. A user with an official ONNX Runtime release sets ONNXRUNTIME_ROOT
# for CMake instead; the runtime loads the library at run time (dlopen), so any ORT >= 1.29 runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
SDK=build/ort-sdk
PY=.venv/bin/python
NPM_PKG=com.github.asus4.onnxruntime@0.4.9
HEADERS='package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers'

mkdir -p "$SDK/include" "$SDK/lib"
"$PY" -m pip install -q "nlohmann-json==3.12.0" "cmake>=3.20" ninja

if [ ! -f "$SDK/include/onnxruntime_cxx_api.h" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$NPM_PKG" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" "$HEADERS"
  cp "$tmp/$HEADERS"/onnxruntime_*.h "$tmp/$HEADERS"/cpu_provider_factory.h "$SDK/include/"
fi

json_dir=$("$PY" -c "import nlohmann_json, pathlib; print(pathlib.Path(nlohmann_json.__file__).parent / 'include')")
rm -rf "$SDK/include/nlohmann" && cp -r "$json_dir/nlohmann" "$SDK/include/"

ort_lib=$("$PY" -c "import onnxruntime, pathlib, glob; print(sorted(glob.glob(str(pathlib.Path(onnxruntime.__file__).parent / 'capi' / 'libonnxruntime.so.1.*')))[-1])")
ln -sf "$(realpath "$ort_lib")" "$SDK/lib/libonnxruntime.so.1"
ln -sf libonnxruntime.so.1 "$SDK/lib/libonnxruntime.so"

if [ ! -f /usr/include/openssl/sha.h ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libssl-dev >/dev/null
  else
    echo "setup_sdk.sh | OpenSSL headers missing. Expected: install libssl-dev (Debian) or openssl-devel." >&2
    exit 1
  fi
fi
echo "C++ SDK ready in $(pwd)/$SDK"
