#!/bin/sh
# Quickstart: install wsgi_fcgi and Flask into .venv, serve the example Flask
# app over FastCGI on a unix socket, and show it answering through the
# project's FastCGI client (what a web server would send). Ctrl-C stops it.
set -eu
cd "$(dirname "$0")/.."
SOCKET=${SOCKET:-/tmp/wsgi_fcgi-quickstart.sock}

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e . flask

# The server refuses to run an app as root unless told to (see README, "Signals
# and processes"); a demo in a root shell or container is told to.
ROOT_FLAG=""
if [ "$(id -u)" = 0 ]; then ROOT_FLAG="--allow-root"; fi

# shellcheck disable=SC2086  # ROOT_FLAG is empty or one word
.venv/bin/python -m wsgi_fcgi --bind "unix:$SOCKET" --chdir examples/flask_app $ROOT_FLAG app:app &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server' EXIT INT TERM

# Ask for / until the server is up (it binds before its workers import the app).
tries=0
until .venv/bin/python -m wsgi_fcgi.client "unix:$SOCKET" / 2>/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ] || ! kill -0 "$server" 2>/dev/null; then
        echo "quickstart: the server did not answer" >&2
        exit 1
    fi
    sleep 0.1
done
echo
echo "quickstart: serving examples/flask_app on unix:$SOCKET (pid $server); Ctrl-C stops it."
wait $server
