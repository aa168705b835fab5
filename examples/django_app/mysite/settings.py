"""Settings of the minimal Django example (no database, no admin).

Served over FastCGI by wsgi_fcgi: see ../README.md. Settings come from the
environment where a deployment needs its own values; note that mod_fcgid
passes only PATH to the app, so under shared hosting set them in
dispatch.fcgi (or with FcgidInitialEnv).
"""

import os

# Replace in production: DJANGO_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
# The host names your site answers to (the Host header, port excluded).
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = []
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"
DATABASES = {}
USE_TZ = True
# Nothing to configure for HTTPS or the mount point: wsgi_fcgi sets
# wsgi.url_scheme from the web server's HTTPS variable, and SCRIPT_NAME to
# the URL prefix the app is mounted at, which is what reverse() uses.
