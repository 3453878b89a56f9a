"""Connecting to Ray: a loopback-only local cluster, or the user's cluster at an address.

Ray by default advertises (and serves on) the host's network address, even
for a cluster on one machine: ``ray.init(_node_ip_address="127.0.0.1")``
alone is not enough in Ray 2.60, which "resolves" a loopback node address to
the routable one. Ray's single-node mode (the one it uses on macOS and
Windows, switched by ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) keeps every
server on the loopback interface; a local mitsuke cluster always uses it.
:func:`listening_sockets` reads ``/proc/net/tcp{,6}`` so tests (and users) can
check what a set of processes listens on.

>>> info = connect(None, num_cpus=2)       # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mitsuke.indexer.errors import MitsukeError

__all__ = ["connect", "listening_sockets", "is_loopback", "process_tree", "LOOPBACK_ENV"]

log = logging.getLogger("mitsuke")

# Ray reads it when ray._private.ray_constants is imported, and child processes inherit it.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def _import_ray(loopback: bool) -> Any:
    if loopback:
        os.environ.update(LOOPBACK_ENV)
        if "ray" in sys.modules:  # imported before us: the constant is already computed
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        import ray
    except ImportError:
        raise MitsukeError("--ray needs Ray Data: pip install 'mitsuke[ray]'") from None
    return ray


def connect(address: str | None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            env_vars: dict[str, str] | None = None) -> bool:
    """Connect this process to Ray; returns whether it started (and so must shut down) the cluster.

    ``address`` ``None``: a Ray already initialised in this process is used as
    it is, else a local cluster bound to 127.0.0.1 is started (all CPUs and
    GPUs of this machine unless ``num_cpus``/``num_gpus`` say otherwise).
    An address (``host:port`` or ``auto``) joins that cluster; a loopback
    address keeps this driver on loopback too. ``env_vars`` go to this job's
    workers (the test hooks use it).
    """
    loopback = address is None or address.split(":")[0] in _LOOPBACK_HOSTS or address.startswith("[::1]")
    ray = _import_ray(loopback)
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": dict(env_vars)} if env_vars else None
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING, "runtime_env": runtime_env}
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address="127.0.0.1", **common)
            log.info("started a local Ray cluster on 127.0.0.1: %s", ray.cluster_resources())
        else:
            if loopback:
                common["_node_ip_address"] = "127.0.0.1"
            ray.init(address=address, **common)
            log.info("joined the Ray cluster at %s: %s", address, ray.cluster_resources())
    except ConnectionError as exc:
        raise MitsukeError(f"cannot join the Ray cluster at {address!r}: {exc}; start it with "
                           "`ray start --head` or give its address (host:port)") from None
    return True


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from ``/proc``): a local Ray cluster is the tree under its driver."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def listening_sockets(pids: Iterable[int]) -> list[tuple[int, str, int]]:
    """``(pid, address, port)`` of every TCP socket in LISTEN state owned by ``pids`` (Linux ``/proc``)."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in owner:  # 0A: TCP_LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((owner[inode], socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (::ffff:127.x.x.x)."""
    return address.startswith("127.") or address == "::1" or address.startswith("::ffff:127.")
