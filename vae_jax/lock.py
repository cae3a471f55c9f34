"""One writer per workdir: an exclusive ``flock`` on ``<workdir>/.lock``. The kernel drops it when
its process ends, however it ends (a SIGKILL never blocks the next run); the file only says who
holds it (``host pid start-time``)."""

from __future__ import annotations

import datetime
import fcntl
import os
import socket


class LockError(RuntimeError):
    """Another process holds the workdir; the message is one line."""


class WorkdirLock:
    """``with WorkdirLock(workdir, enabled=is_main_process):`` around everything that writes the
    workdir (only the main process of a multi-host run takes it); raises LockError."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.workdir, self.enabled = workdir, enabled
        self.path = os.path.join(workdir, ".lock")
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        if not self.enabled:
            return self
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode(errors="replace").split()
            os.close(fd)
            host, pid, since = (holder + ["?"] * 3)[:3]  # "?" while the holder is still writing it
            raise LockError(f"{self.workdir} is in use by pid {pid} on host {host} (since {since}); "
                            "wait for it or use another --workdir") from None
        os.ftruncate(fd, 0)
        start = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.write(fd, f"{socket.gethostname()} {os.getpid()} {start}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
