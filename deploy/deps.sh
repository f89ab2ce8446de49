#!/usr/bin/env bash
# deps.sh - install what Sluice needs on Debian 12, only what is missing.
# Idempotent: checks dpkg first and calls apt-get only for absent packages.
# Usage: deploy/deps.sh [--python]   (--python also installs the Python test
# references; `make test` passes it.)
set -euo pipefail

APT_PKGS=(
  build-essential pkg-config clang-format
  nats-server etcd-server etcd-client
  libnats-dev libcurl4-openssl-dev libprotobuf-c-dev protobuf-c-compiler
  libcjson-dev check libucx-dev ucx-utils libcivetweb-dev
  libopenblas-dev libxxhash-dev libpcre2-dev
  curl procps iproute2
)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "deps: all Debian packages present"
fi

if [ "${1:-}" = "--python" ] && [ -x deploy/deps-python.sh ]; then
  deploy/deps-python.sh
fi
