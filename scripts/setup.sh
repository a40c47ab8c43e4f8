#!/usr/bin/env bash
# Set up dffs on a fresh Debian 12 machine, as root: Debian packages, then a
# virtualenv in .venv with dffs installed editable plus its test tools.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  python3 python3-venv python3-dev build-essential pkg-config  # Python and pyfuse3's build
  fuse3 libfuse3-dev                                           # the FUSE mount
  nginx-light curl                                             # the demo origin and test origins
  iproute2 procps                                              # network namespaces, process tools in tests
  rclone                                                       # the lazy-mount competitor in scripts/bench
  aria2                                                        # aria2c -x8: the multi-connection competitor of dffs get in scripts/bench
  postgresql                                                   # the manager's PostgreSQL tests
  docker-registry containerd runc                              # the registry-mirror tests: real registry and runtime
  skopeo umoci busybox-static                                  # test images built offline and pushed
  stargz-snapshotter                                           # ctr-remote: eStargz conversions in the layer and snapshotter tests
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: ready ($(.venv/bin/dffs --version))"
