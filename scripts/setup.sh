#!/usr/bin/env bash
# Creates .venv/ with corolla and its pinned dependencies; a no-op when they are already installed. Needs Python 3.11
# with venv (Debian's python3-venv, installed here when missing and run as root).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.corolla-installed"
wanted="$(cat "$root/pyproject.toml" "$root/requirements.lock" | sha256sum | cut -d' ' -f1)"
installed() { [[ -x "$venv/bin/corolla" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; }
installed && exit 0
# One set-up at a time (the main job and the tests started together on a fresh clone): the second waits, then finds
# the venv installed.
exec 9<"${BASH_SOURCE[0]}"
flock 9 2>/dev/null || true  # no flock (the command, or the filesystem's): one at a time is then the user's care
installed && exit 0
python="$(command -v python3.11 || command -v python3 || true)"
if [[ -z "$python" ]] || ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup.sh: corolla needs Python 3.11 or newer as python3.11 or python3: install it (Debian 12: apt-get" \
        "install python3 python3-venv)" >&2
    exit 1
fi
echo "setting up $venv (pinned dependencies, once) ..." >&2
# A venv made without pip (python3-venv missing then) is made again.
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    if ! "$python" -c 'import ensurepip' 2>/dev/null; then  # Debian's Python without its venv package
        venv_package="$(basename "$python")-venv"
        if [[ $EUID -ne 0 ]]; then
            echo "setup.sh: $python cannot make a venv: install Debian's $venv_package (as root), then run this again" >&2
            exit 1
        fi
        echo "installing $venv_package (a Debian package, once) ..." >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$venv_package" >/dev/null
    fi
    "$python" -m venv --clear "$venv"
fi
# torch==2.13.0 is pinned in requirements.lock: the CPU wheel here, the CUDA build on a GPU cluster.
# (This machine's pip config names local package folders that may be absent; its warnings about them are noise.)
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$root/requirements.lock" -e "$root[test]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "$wanted" > "$stamp"
