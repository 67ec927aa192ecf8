"""The fork server: starts worker processes by forking itself.

Started by the runner as ``python -u -m autokitteh._zygote CTRL_FD [VENV MEMORY_MB
PROCESSES HIDDEN GROUPS FILES TEMP]`` in a worker's environment; a root runner starts it isolated
(``-I -S``, the SDK from its own root-owned copy) and names the environment whose packages a
worker opens once it is its user, within its limits, and where its control groups are. It
imports what a worker needs once, then forks a worker for each request on its control
socket (a Unix ``SOCK_SEQPACKET`` socket): a worker starts in about a millisecond instead
of a tenth of a second, and the pages of the interpreter and the SDK stay shared between
all the workers forked from it (copy on write) instead of each worker holding its own copy.

Requests (runner to server): ``F``, the user id the worker runs as (-1: the server's own),
a space and the working directory, with three descriptors: the worker's frame pipes (in,
out) and its stderr. Replies: ``P<pid>`` for each fork, and ``X<pid> <exit code>`` when a
worker ends (the server is its parent and reaps it). The server exits when the runner
closes the control socket. A server started as root runs no code of the environment's
packages: it makes each worker its user (for good) before any of it runs.
"""

from __future__ import annotations

import gc
import os
import selectors
import signal
import socket
import sys

from . import _hide, _worker

MAX_REQUEST = 8192


def _child(
    ctrl: socket.socket, own: list[int], fds: list[int], uid: int, cwd: str, box: list[str]
) -> None:
    """Becomes a worker; never returns."""
    try:
        os.setsid()  # a process group of its own: the runner kills what the handler started
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a started worker
        ctrl.close()
        for fd in own:
            os.close(fd)
        fd_in, fd_out, err = fds
        os.dup2(err, 2)
        os.close(err)
        _worker.close_other_fds({fd_in, fd_out})
        if uid >= 0:
            venv, memory_mb, processes, _, groups, files, temp = box  # (hidden by the server)
            groups, temp = (x if x != "-" else "" for x in (groups, temp))
            _worker.sandboxed(
                uid,
                venv,
                int(memory_mb),
                int(processes),
                groups=groups,
                files=int(files),
                temp=temp,
            )
        os.chdir(cwd)
        _worker.main([str(fd_in), str(fd_out)])
    except BaseException as e:  # said on its stderr, which the runner keeps for the session
        if not isinstance(e, SystemExit):
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
    finally:
        os._exit(1)


def _reap(ctrl: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        try:
            ctrl.send(f"X{pid} {os.waitstatus_to_exitcode(status)}".encode())
        except OSError:  # the runner is gone
            sys.exit(0)


def main(argv: list[str]) -> None:
    _worker.close_other_fds({int(argv[0])})  # (its workers inherit what it holds)
    ctrl = socket.socket(fileno=int(argv[0]))
    # venv, memory_mb, processes, hidden, control groups, open files, temporary directories:
    # for sandboxed workers
    defaults = ["-", "0", "0", "-", "-", "0", "-"]
    given = argv[1:8] if len(argv) > 4 else []
    box = given + defaults[len(given) :]
    if box[3] != "-":
        _hide.hide(box[3])  # once, for all its workers: they are forked in its namespace
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that it wakes us
    # Ctrl-C in `ak up`'s terminal reaches every process: the server ends with the runner.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.collect()
    gc.freeze()  # what was imported stays shared with the workers (no GC writes to it)
    sel = selectors.DefaultSelector()
    sel.register(ctrl, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj == wake_r:
                os.read(wake_r, 512)
                _reap(ctrl)
                continue
            try:
                msg, fds, _, _ = socket.recv_fds(ctrl, MAX_REQUEST, 3)
            except ConnectionResetError:  # the runner died (`ak up` says so): no traceback
                msg, fds = b"", []
            if not msg:  # the runner is gone: its workers see their pipes close
                sys.exit(0)
            if msg[:1] != b"F" or len(fds) != 3:
                for fd in fds:
                    os.close(fd)
                continue
            uid, _, cwd = os.fsdecode(msg[1:]).partition(" ")
            pid = os.fork()
            if pid == 0:
                _child(ctrl, [wake_r, wake_w, sel.fileno()], fds, int(uid), cwd, box)
            for fd in fds:
                os.close(fd)
            try:
                ctrl.send(f"P{pid}".encode())
            except OSError:
                sys.exit(0)
        _reap(ctrl)


if __name__ == "__main__":
    main(sys.argv[1:])
