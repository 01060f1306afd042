"""Who runs an execution: owner names for leases, and telling a live owner from a gone one.

An embedded runner (an :class:`~flux.runtime.engine.Engine`) holds the lease of each execution it
runs under an owner name that says where it lives::

    embedded:<host>:<boot id>:<pid>:<process start time>:<random>

Another process on the same machine can then tell, without waiting for the lease to expire,
that the owner is gone: the boot id differs (the machine restarted), no process has that pid,
the process with that pid started at another time (the pid was reused), or it is a zombie. A
frozen process (SIGSTOP, a debugger) still exists, so its lease is only taken once it expires.
Owners on other hosts are never judged gone: their leases expire.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket

PREFIX = "embedded"


@functools.cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip().replace("-", "")[:12]
    except OSError:
        return "-"


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot ("" where /proc is not
    available), or None when there is no such live process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # the command name (field 2) is in parentheses and may hold spaces: split after it
    fields = stat[stat.rfind(b")") + 2 :].split()
    if not fields or fields[0] in (b"Z", b"X"):  # zombie or dead
        return None
    return fields[19].decode() if len(fields) > 19 else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def _host() -> str:
    return socket.gethostname().replace(":", "_") or "-"


def new_owner() -> str:
    """A fresh owner name for one runner in this process (see the module docstring)."""
    pid = os.getpid()
    started = _start_time(pid) or ""
    return f"{PREFIX}:{_host()}:{_boot_id()}:{pid}:{started}:{secrets.token_hex(4)}"


def owner_gone(owner: str) -> bool:
    """True when ``owner`` is an embedded runner on this machine whose process no longer exists
    (see the module docstring); False when it may be alive, or cannot be told from here."""
    parts = owner.split(":")
    if len(parts) != 6 or parts[0] != PREFIX or parts[1] != _host():
        return False
    _, _, boot, pid_text, started, _ = parts
    if boot != _boot_id():
        return boot != "-" and _boot_id() != "-"
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        # this process: gone only if it is another incarnation (cannot happen within a boot)
        return False
    now_started = _start_time(pid)
    if now_started is None:
        return True
    if now_started == "":  # no /proc here: all we can tell is whether the pid exists
        return not _alive(pid)
    if started and now_started != started:
        return True  # the pid was reused by a newer process
    return False


def describe(owner: str | None) -> str:
    """A short human name for an owner: ``pid 123 on host`` for an embedded runner."""
    if not owner:
        return "no one"
    parts = owner.split(":")
    if len(parts) == 6 and parts[0] == PREFIX:
        return f"embedded runner pid {parts[3]} on {parts[1]}"
    return owner


__all__ = ["describe", "new_owner", "owner_gone"]
