#!/usr/bin/env bash
# Run the whole ndmpd test suite on a fresh Debian machine: installs the real peers
# (ndmjob from amanda-common, tshark, btrfs-progs; systemd for systemd-analyze; iproute2's ss,
# which the replication fault tests drop a data connection with), a virtualenv with the
# project and its test extras, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# systemd: systemd-analyze verify of conf/ndmpd.service; amanda-server and libencode-locale-perl:
# Amanda's ndmp: device, chg-ndmp and amtape/amlabel; amanda-client: amdump's local client
# (amandad, amgtar) for the whole-run test (tests/interop/test_amanda_*.py)
packages=(amanda-common amanda-server amanda-client libencode-locale-perl tshark btrfs-progs systemd iproute2)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo -n"; else sudo=none; fi
  if [ "$sudo" != none ]; then
    echo "installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    echo "wireshark-common wireshark-common/install-setuid boolean false" | $sudo debconf-set-selections
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "not root: cannot install ${missing[*]}; the tests that need them will skip" >&2
  fi
fi

venv=${NDMPD_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
