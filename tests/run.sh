#!/usr/bin/env bash
# Install what the test suite needs and run it: the one command for a fresh
# Debian/Ubuntu machine (and for CI, through .ci/run).
#
#   bash tests/run.sh [PYTEST ARGS...]      e.g.  bash tests/run.sh -x -q tests/test_nginx.py
#
# - As root with apt-get: installs the web servers and tools the
#   integration tests start, only the ones missing (apt-get update runs
#   only when something must be installed). Without root or apt-get it
#   installs nothing: tests for a missing server are skipped, or fail
#   when CI=true.
# - Creates .venv (python3 -m venv) if missing and installs the package in
#   editable mode with its test extra; skipped when pyproject.toml and
#   setup.cfg have not changed since the last install.
# - WSGI_FCGI_COMPILE=1: builds the compiled form in place first (mypyc,
#   setup.py) and runs the suite on it; without it, compiled files in the
#   checkout are removed and the suite runs pure Python.
# - Runs pytest with the arguments given; CI from the environment is passed
#   through (CI=true turns "web server missing" skips into failures).
set -eu

cd "$(dirname "$0")/.."
PYTHON3=${PYTHON3:-python3}

# package -> a file that package installs
# (mod_proxy_fcgi, mod_authnz_fcgi, mod_ssl, mod_headers and mod_auth_basic
# come with apache2; openssl
# makes the throwaway TLS certificates; the system python3 runs the apps
# that Apache and lighttpd start as www-data, from a virtualenv the tests
# make with it; systemd brings systemd-socket-activate, which the socket
# activation tests run.)
DEB_NEEDS="
nginx-light:/usr/sbin/nginx
apache2:/usr/sbin/apache2
libapache2-mod-fcgid:/usr/lib/apache2/modules/mod_fcgid.so
lighttpd:/usr/sbin/lighttpd
lighttpd-mod-openssl:/usr/lib/lighttpd/mod_openssl.so
openssl:/usr/bin/openssl
python3:/usr/bin/python3
curl:/usr/bin/curl
wrk:/usr/bin/wrk
libfcgi-bin:/usr/bin/cgi-fcgi
systemd:/usr/bin/systemd-socket-activate
"

install_debian_packages() {
    missing=""
    for need in $DEB_NEEDS; do
        pkg=${need%%:*}
        file=${need#*:}
        [ -e "$file" ] || missing="$missing $pkg"
    done
    if ! command -v "$PYTHON3" >/dev/null 2>&1; then
        missing="$missing python3 python3-venv"
    elif [ ! -x .venv/bin/python ] && ! "$PYTHON3" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing="$missing python3-venv"
    fi
    [ -n "$missing" ] || return 0
    echo "tests/run.sh: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # nginx-light is gone from newer Debian releases: fall back to nginx.
    case " $missing " in
        *" nginx-light "*)
            if ! apt-cache show nginx-light >/dev/null 2>&1; then
                missing=$(echo "$missing" | sed 's/nginx-light/nginx/')
            fi ;;
    esac
    # shellcheck disable=SC2086  # word splitting of the package list is wanted
    apt-get install -y -q --no-install-recommends $missing
}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    install_debian_packages
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON3" -m venv .venv
fi

stamp=.venv/.wsgi_fcgi-test-install
want=$(cat pyproject.toml setup.cfg setup.py 2>/dev/null | cksum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
        || ! .venv/bin/python -c 'import wsgi_fcgi, pytest, pytest_timeout, hypothesis, flask, django' >/dev/null 2>&1; then
    # (the editable install is the pure-Python one; WSGI_FCGI_COMPILE is for the step below)
    # compat mode: the checkout itself goes on sys.path, so that a compiled form
    # built in place (its shared library sits at the top of the checkout) imports too.
    env -u WSGI_FCGI_COMPILE PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip install -q \
        --config-settings editable_mode=compat -e '.[test]'
    echo "$want" > "$stamp"
fi

# The compiled form (issue 16, setup.py): WSGI_FCGI_COMPILE=1 builds it in place
# with mypyc before the run; otherwise compiled files left in the checkout are
# removed, so that the suite always runs the source as it is now.
compiled_files() { find . -maxdepth 2 -name '*.so' \( -path './wsgi_fcgi/*' -o -name '*__mypyc*' \); }
if [ "${WSGI_FCGI_COMPILE:-0}" != 0 ]; then
    .venv/bin/python -c 'import mypy' >/dev/null 2>&1 \
        || PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip install -q 'mypy>=1.5'  # mypyc comes with it
    echo "tests/run.sh: compiling the request path with mypyc" >&2
    compiled_files | xargs -r rm -f
    WSGI_FCGI_COMPILE=1 .venv/bin/python setup.py -q build_ext --inplace >/dev/null
    rm -rf build
else
    compiled_files | xargs -r rm -f
fi

echo "tests/run.sh: CI=${CI:-} $(.venv/bin/python --version)" >&2
exec .venv/bin/python -m pytest "$@"
