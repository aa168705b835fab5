#!/usr/bin/env bash
# Install everything bench/run.py starts, on Debian/Ubuntu as root:
#   bash bench/setup.sh
# - Debian packages (only the missing ones): nginx, wrk, libfcgi-dev, spawn-fcgi,
#   gcc, zlib1g-dev, strace, curl, valgrind (instructions.py)
# - bench/.venv: its own virtualenv (not the test venv), with wsgi_fcgi installed
#   editable from this checkout plus the `bench` extra (flup, gunicorn, uWSGI --
#   built from source with gcc, about 20 s -- Flask, py-spy)
# - bench/c/hello: the libfcgi responder, compiled with gcc
set -eu
cd "$(dirname "$0")/.."
PYTHON3=${PYTHON3:-python3}

need="nginx:/usr/sbin/nginx wrk:/usr/bin/wrk libfcgi-dev:/usr/include/fcgiapp.h spawn-fcgi:/usr/bin/spawn-fcgi
gcc:/usr/bin/gcc zlib1g-dev:/usr/include/zlib.h strace:/usr/bin/strace curl:/usr/bin/curl
valgrind:/usr/bin/valgrind"
missing=""
for item in $need; do
    [ -e "${item#*:}" ] || missing="$missing ${item%%:*}"
done
if [ -n "$missing" ]; then
    echo "bench/setup.sh: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi

[ -x bench/.venv/bin/python ] || "$PYTHON3" -m venv bench/.venv
PIP_DISABLE_PIP_VERSION_CHECK=1 bench/.venv/bin/python -m pip install -q -e '.[bench]'

gcc -O2 -Wall -o bench/c/hello bench/c/hello.c -lfcgi -lz
echo "bench/setup.sh: ready. Try: bench/.venv/bin/python bench/run.py -d 2 -r 1 --cells hello:16" >&2
