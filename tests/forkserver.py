"""A fork server for the test suite: ``python -m bench.run`` without a new interpreter's start-up each time.

Started once per test process (``tests/processes.py``) as ``python -m tests.forkserver SOCKET``. It imports what
``bench.run`` imports (torch, Hydra, scipy, ...: about 3 s of CPU that every fresh ``python -m bench.run`` pays),
plus pandas and ``scipy.stats``, which every sweep's report imports. Then, for each request on its Unix socket,
it forks a child that becomes the command: the request's stdin, stdout and stderr (passed as file descriptors),
working directory, environment and arguments, a fresh interpreter's stdio and signal settings, and then
``runpy.run_module("bench.run", run_name="__main__")``, as ``python -m`` does. The child ends through the
interpreter's own exit, so its exit status, ``atexit`` handlers and flushing are a fresh process's.

The server answers each request with the child's pid, then with its exit status (``os.waitstatus_to_exitcode``:
negative for a signal, as ``subprocess`` reports it). It never runs torch code itself, so no thread pool exists
when it forks. It exits when its parent does.

What differs from a fresh interpreter, so that the tests that depend on it still start one (``tests/processes.py``
routes them): warnings printed while importing go to the server's stderr, not the command's; ``PYTHON*``
variables of the request (``PYTHONPATH``, ...) would not apply; ``sys.orig_argv`` is the server's.
"""

from __future__ import annotations

import io
import json
import os
import random
import runpy
import selectors
import signal
import socket
import struct
import sys
import time

HEADER = struct.Struct("!Q")  # the length of the JSON request that follows
POLL_SECONDS = 0.02  # how often finished children are reaped


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = connection.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("the client closed the connection mid-request")
        chunks += chunk
    return bytes(chunks)


def serve(path: str) -> tuple[dict, list[int]] | None:
    """Accept requests until the parent exits. Returns the request in a forked child; None in the server."""
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while os.getppid() == parent:
        for _ in selector.select(timeout=POLL_SECONDS):
            connection, _ = listener.accept()
            header, fds, _, _ = socket.recv_fds(connection, HEADER.size, 3)
            header += _read_exactly(connection, HEADER.size - len(header))  # a stream may split even 8 bytes
            request = json.loads(_read_exactly(connection, HEADER.unpack(header)[0]))
            pid = os.fork()
            if pid == 0:
                selector.close()
                listener.close()
                for other in children.values():
                    other.close()
                connection.close()
                return request, fds
            for fd in fds:
                os.close(fd)
            connection.sendall(f"{pid}\n".encode())
            children[pid] = connection
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            connection = children.pop(pid)
            try:
                connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:  # the client went away; nothing waits for this status
                pass
            connection.close()
    return None


def _text_stream(fd: int, unbuffered: bool, errors: str, line_buffering: bool) -> io.TextIOWrapper:
    """A standard stream as the interpreter opens it at start-up."""
    raw = io.FileIO(fd, "rb" if fd == 0 else "wb", closefd=False)
    buffered = raw if unbuffered and fd != 0 else (io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw))
    return io.TextIOWrapper(
        buffered,
        encoding="utf-8" if sys.flags.utf8_mode else None,
        errors=errors,
        line_buffering=line_buffering,
        write_through=unbuffered and fd != 0,
    )


def become(request: dict, fds: list[int]) -> None:
    """Turn this forked child into the requested command, up to the point where ``python -m`` runs the module."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = sys.__stdin__ = _text_stream(0, unbuffered, "strict", False)
    sys.stdout = sys.__stdout__ = _text_stream(1, unbuffered, "strict", os.isatty(1))
    sys.stderr = sys.__stderr__ = _text_stream(2, unbuffered, "backslashreplace", True)
    sys.path[0] = os.getcwd()  # what ``python -m`` puts first
    sys.argv = [request["module"], *request["arguments"]]  # runpy puts the module's file in sys.argv[0]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # a fresh interpreter draws new seeds: nothing should rely on the global generators, and nothing here shares them
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()


def main() -> None:
    started = time.perf_counter()
    import pandas  # noqa: F401
    import scipy.stats  # noqa: F401

    import bench
    import bench.run  # noqa: F401

    # what ``python -m`` finds: the module's imports done, the module itself not yet (runpy warns otherwise)
    del sys.modules["bench.run"], bench.run
    print(f"forkserver: imports took {time.perf_counter() - started:.1f} s", file=sys.stderr)
    served = serve(sys.argv[1])
    if served is None:
        return
    request, fds = served
    become(request, fds)
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
