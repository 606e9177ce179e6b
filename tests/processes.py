"""``run`` and ``Popen`` for the tests' command lines: ``python -m bench.run`` goes through the fork server.

A fresh ``python -m bench.run`` spends about 3 s of CPU importing torch, Hydra and scipy before it reads its
arguments; the suite starts about forty of them. ``tests/forkserver.py`` imports all that once per test process
and forks a child per command instead, with the command's own stdio, working directory, environment and
arguments (see its docstring for what a fork cannot reproduce). The objects returned here behave as
``subprocess``'s for what the tests use: ``pid`` (a real process, for ``os.kill``), ``returncode`` (negative for
a signal), ``poll``, ``wait``, ``communicate``, ``send_signal``, ``kill``, ``stdout`` and ``stderr``.

Every other command, and any ``python -m bench.run`` given ``fresh=True`` or a ``PYTHON*`` variable of its own,
starts a real interpreter. The tests that need one (the shared smoke sweep every resumed run is compared with,
stderr that must show nothing but one line, peak memory, imports) keep using it.
"""

from __future__ import annotations

import atexit
import io
import json
import locale
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.forkserver import HEADER

MODULE = "bench.run"
_server: dict[str, Any] = {}


def forkable(command: list[str], env: dict[str, str] | None) -> bool:
    if command[:3] != [sys.executable, "-m", MODULE] or not hasattr(socket, "send_fds"):
        return False
    startup = {k: v for k, v in (env or os.environ).items() if k.startswith("PYTHON") and k != "PYTHONUNBUFFERED"}
    return startup == {k: v for k, v in os.environ.items() if k.startswith("PYTHON") and k != "PYTHONUNBUFFERED"}


def default_sigint_handler() -> None:
    """Ctrl-C as a terminal's child gets it: a shell without job control starts background commands with SIGINT
    ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _server_socket() -> str:
    """The socket of this process's fork server, started on first use."""
    if _server.get("pid") != os.getpid():
        folder = tempfile.mkdtemp(prefix="gia-forkserver-")
        path = os.path.join(folder, "socket")
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver", path],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=default_sigint_handler,  # so its children start as an interpreter whose SIGINT was not ignored
        )
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the fork server did not start (exit status {process.wait()})")
        _server.update(pid=os.getpid(), path=path, process=process)
        atexit.register(process.kill)
    return _server["path"]


class ForkedProcess:
    """A command run by the fork server; the subset of ``subprocess.Popen`` that the tests use."""

    def __init__(
        self, command: list[str], cwd: str | Path, env: dict | None, stdout: int | None, stderr: int | None, text: bool
    ) -> None:
        self.args, self.returncode = command, None
        mine: list[int] = []  # the ends of pipes this process reads
        given: list[int] = []  # what the child gets as stdin, stdout, stderr
        null = os.open(os.devnull, os.O_RDWR)
        given.append(null)
        for choice, inherited in ((stdout, 1), (stderr, 2)):
            if choice == subprocess.PIPE:
                read_end, write_end = os.pipe()
                mine.append(read_end)
                given.append(write_end)
            else:
                mine.append(-1)
                given.append(null if choice == subprocess.DEVNULL else inherited)
        request = {
            "module": MODULE,
            "arguments": command[3:],
            "cwd": str(cwd),
            "env": dict(env if env is not None else os.environ),
        }
        payload = json.dumps(request).encode()
        self._connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._connection.connect(_server_socket())
        socket.send_fds(self._connection, [HEADER.pack(len(payload))], given)
        self._connection.sendall(payload)
        self._buffer = b""
        self.pid = int(self._read_line(None))
        for fd in {*given} - {1, 2}:  # the child has its copies now
            os.close(fd)
        self.stdout, self.stderr = (self._stream(fd, text) if fd >= 0 else None for fd in mine)
        self._read: dict[str, bytes] = {}
        self._readers: dict[str, threading.Thread] = {}

    def _read_line(self, timeout: float | None) -> str | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._connection], [], [], left)[0]:
                return None
            chunk = self._connection.recv(64)
            if not chunk:
                raise RuntimeError("the fork server stopped answering")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def poll(self) -> int | None:
        return self.wait(timeout=0, raise_on_timeout=False)

    def wait(self, timeout: float | None = None, raise_on_timeout: bool = True) -> int | None:
        if self.returncode is None:
            line = self._read_line(timeout)
            if line is None:
                if raise_on_timeout:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                return None
            self.returncode = int(line)
            self._connection.close()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    @staticmethod
    def _stream(fd: int, text: bool) -> io.BufferedReader | io.TextIOWrapper:
        """The reading end of a pipe, as ``Popen`` opens it (text: the locale's encoding, universal newlines)."""
        binary = os.fdopen(fd, "rb")
        return io.TextIOWrapper(binary, encoding=locale.getpreferredencoding(False)) if text else binary

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        """Read stdout and stderr to their end, then wait; as ``Popen.communicate`` without input."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None and name not in self._readers:
                reader = threading.Thread(target=lambda s=stream, n=name: self._read.__setitem__(n, s.read()))
                reader.daemon = True
                reader.start()
                self._readers[name] = reader
        for reader in self._readers.values():
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self._read.get("stdout"), self._read.get("stderr")


def Popen(  # noqa: N802
    command: list[str],
    *,
    cwd: str | Path,
    env: dict[str, str] | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    text: bool = False,
    default_sigint: bool = False,
    fresh: bool = False,
) -> ForkedProcess | subprocess.Popen:
    """``subprocess.Popen`` for a command line. ``default_sigint``: the command takes Ctrl-C as a terminal's
    child does (a fork server's child always does)."""
    if not fresh and forkable(command, env):
        return ForkedProcess(command, cwd, env, stdout, stderr, text)  # built by Popen only
    preexec = default_sigint_handler if default_sigint else None
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text, preexec_fn=preexec)


def run(
    command: list[str],
    *,
    cwd: str | Path,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    fresh: bool = False,
) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True, ...)``: on timeout the command is killed."""
    process = Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, fresh=fresh)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
