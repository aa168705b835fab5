# python -m wsgi_fcgi -c wsgi_fcgi.conf.py  (from this directory, or with it on PYTHONPATH)
#
# A config file is Python: settings by name, and server hooks as functions
# named as the hook (gunicorn's names and arguments). See docs/operations.md.

wsgi_app = "hooks_app:app"
bind = ["unix:/run/hooks_app/wsgi_fcgi.sock"]
workers = 2
preload = True  # import the app once, in the master: workers share its memory
timeout = 30


def post_fork(server, worker):
    # In the new worker, before it serves. With --preload the app opened its
    # database connection in the master; a connection shared between
    # processes corrupts, so each worker closes its copy and opens its own.
    import hooks_app

    hooks_app.db.close()
    hooks_app.connect()


def worker_abort(worker):
    # The master kills a request past --timeout (SIGABRT); this runs in that
    # worker before it exits, so the telemetry it buffered is not lost.
    import hooks_app

    hooks_app.telemetry.flush(reason="worker_abort")
