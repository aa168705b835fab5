"""flup 1.0.3 FastCGI server, as people deploy it:

    python flup_server.py SOCKET_PATH MODULE:APP WORKERS [THREADS]

Without THREADS (or with 1): prefork, fcgi_fork.WSGIServer with minSpare =
maxSpare = maxChildren = WORKERS, so the pool is static like the other
backends'.

With THREADS > 1: WORKERS processes of flup's threaded server
(fcgi.WSGIServer) on one listening socket, each with a pool of exactly THREADS
threads. flup's threaded server is one process that binds its own socket, so
this script binds it, then forks WORKERS copies that find it on fd 0 (the
FastCGI listen socket, as `spawn-fcgi -F WORKERS` would hand it to them) and
waits for them. The socket is non-blocking, so a copy that loses the race
for a connection goes back to select() instead of blocking in accept() (and
stops on SIGTERM). Like every threaded flup, a copy whose THREADS threads are all
busy still accepts the next connection and closes it at once (flup's
ThreadPool.addJob(allowQueuing=False)): nginx answers that request 502.

Either way the app is imported before the fork (shared pages).
"""

import importlib
import os
import signal
import socket
import sys


def load_app(spec):
    module, _, name = spec.partition(":")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    return getattr(importlib.import_module(module), name or "application")


def prefork(app, sock, workers):
    from flup.server.fcgi_fork import WSGIServer

    WSGIServer(app, bindAddress=sock, umask=0o077, minSpare=workers, maxSpare=workers,
               maxChildren=workers, maxRequests=0).run()


def threaded(app, sock, workers, threads):
    from flup.server.fcgi import WSGIServer

    listener = bind(sock)
    # Every copy select()s on the one socket and then accept()s: the copies that lose the race
    # get EAGAIN (flup retries) instead of blocking in accept(), where SIGTERM would never end
    # their loop (flup_server.py would wait for SIGKILL). Accepted sockets stay blocking.
    listener.setblocking(False)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            os.dup2(listener.fileno(), 0)  # FCGI_LISTENSOCK_FILENO: flup serves it when bindAddress is None
            listener.close()
            # maxSpare threads start at once; maxThreads = maxSpare: never more, and none retire
            WSGIServer(app, multiprocess=workers > 1, minSpare=1, maxSpare=threads, maxThreads=threads).run()
            os._exit(0)
        children.append(pid)
    listener.close()

    def stop(signum, frame):
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for pid in children:
        os.waitpid(pid, 0)  # retried on EINTR (PEP 475)
    try:
        os.unlink(sock)
    except OSError:
        pass


def bind(path):
    """What flup's _setupSocket does for a unix socket: unlink, bind under umask 077, listen."""
    try:
        os.unlink(path)
    except OSError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(socket.SOMAXCONN)
    return listener


def main():
    sock, spec, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    app = load_app(spec)
    if threads > 1:
        threaded(app, sock, workers, threads)
    else:
        prefork(app, sock, workers)


if __name__ == "__main__":
    main()
