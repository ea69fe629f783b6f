"""The ``ssh -L`` line that brings a service on this machine (the dashboard) to the user's laptop."""
from __future__ import annotations

import getpass
import socket

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def tunnel_line(port: int, *, host: str = "127.0.0.1", user: str | None = None,
                machine: str | None = None) -> str:
    """The ``ssh -L`` command that forwards the laptop's ``port`` to the dashboard on this machine."""
    user = user or getpass.getuser()
    machine = machine or _machine_name()
    target = "localhost" if host in LOCAL_HOSTS or host in ("0.0.0.0", "::") else host
    return f"ssh -L {port}:{target}:{port} {user}@{machine}"


def _machine_name() -> str:
    name = socket.getfqdn()
    # getfqdn() answers "localhost" or a reverse-DNS artefact on boxes without proper DNS
    if not name or name.startswith("localhost") or name.endswith(".arpa"):
        name = socket.gethostname()
    return name
