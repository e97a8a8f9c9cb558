#!/usr/bin/env bash
# Installs the Debian packages the project needs, only when some are missing. Fast no-op otherwise.
# The CUDA toolkit is not installed here: without nvcc, only the CUDA targets are unavailable.
set -euo pipefail

packages=(
  g++ make
  libopenblas-dev            # GEMMs on the CPU
  doctest-dev                # tests
  libboost-program-options-dev
  nlohmann-json3-dev         # safetensors headers, configs
  zlib1g-dev                 # gzip IDX files
)
# Extra packages for data, plots and the PyTorch comparison; set SETUP_MINIMAL=1 to skip them.
if [ "${SETUP_MINIMAL:-0}" != 1 ]; then
  packages+=(dataset-fashion-mnist espeak-ng python3-matplotlib python3-torch python3-numpy)
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing missing Debian packages: ${missing[*]}"
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "setup: missing packages (${missing[*]}) and no root or passwordless sudo to install them." >&2
  echo "setup: run as root: apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
