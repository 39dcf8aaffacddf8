#!/usr/bin/env bash
# Installs Debian's Slurm and munge for the local test cluster (slurm/testcluster.py), with the accounting daemon
# and MariaDB so that sacct works; a fast no-op when everything is already installed. Needs root (apt-get).
set -euo pipefail
packages=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server iproute2 util-linux)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
if [[ $EUID -ne 0 ]]; then
    echo "setup-slurm.sh: installing ${missing[*]} needs root" >&2
    exit 1
fi
echo "installing ${missing[*]} (Debian packages, once) ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Services are never started by the install here: slurm/testcluster.py starts its own daemons in a private folder.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
