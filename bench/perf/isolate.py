"""Run one measurement in a forked child process, so that its peak resident memory is its own."""

from __future__ import annotations

import argparse
import multiprocessing
import traceback
from collections.abc import Callable
from typing import Any

import torch

from bench.system import tune_malloc


def _child(connection: Any, fn: Callable[..., Any], arguments: tuple, threads: int, malloc: str) -> None:
    try:
        torch.set_num_threads(threads)
        if malloc == "tuned":
            tune_malloc()
        connection.send(("ok", fn(*arguments)))
    except BaseException as error:  # report, do not hang the parent
        connection.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=4)}"))
    finally:
        connection.close()


def call_isolated(
    fn: Callable[..., Any], arguments: tuple, args: argparse.Namespace, malloc: str | None = None
) -> tuple[str, Any]:
    """``("ok", fn(*arguments))`` or ``("error", message)``: in a forked child, or in-process (CUDA, --no-fork).

    The child sets ``args.threads`` torch threads and the glibc malloc mode (``malloc``, default ``args.malloc``).
    """
    if not args.fork:
        try:
            return "ok", fn(*arguments)
        except Exception as error:
            return "error", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=4)}"
        finally:
            if torch.device(args.device).type == "cuda":
                torch.cuda.empty_cache()
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, fn, arguments, args.threads, malloc or args.malloc))
    process.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:
        status, payload = "error", "the child process died without a result (out of memory?)"
    process.join()
    if process.exitcode not in (0, None) and status == "ok":
        status, payload = "error", f"child exit code {process.exitcode}"
    return status, payload
