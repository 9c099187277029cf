"""Cutting off the connections to a replica that stopped answering.

A stopped server (SIGSTOP, a frozen VM) still has its kernel accept and
acknowledge TCP traffic, so a statement waiting on it waits until the server
runs again unless its driver has a read timeout, and psycopg2 has none. When
the health monitor finds that a replica does not answer, :class:`Connections`
shuts down the sockets of every open connection to it from this side
(``socket.shutdown``): a statement waiting on one fails at once as a lost
connection, which a read session retries on the next replica when nothing
of its transaction has run yet.

Drivers: psycopg2 and psycopg (``connection.fileno()``), PyMySQL (its
socket, ``Connection._sock``, pinned by a test). Connections of other
drivers are left alone.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

__all__ = ["Connections"]


class Connections:
    """The open DBAPI connections of one engine, tracked through its pool's events."""

    def __init__(self, engine: Engine) -> None:
        # Held while cutting off, and by the close events, which run before a
        # connection closes: a descriptor cannot be reused while it is shut down.
        self._lock = threading.Lock()
        self._open: dict[int, Any] = {}
        event.listen(engine, "connect", self._connected)
        event.listen(engine, "close", self._closed)
        event.listen(engine, "close_detached", self._closed)

    def _connected(self, dbapi_connection: Any, record: Any) -> None:
        with self._lock:
            self._open[id(dbapi_connection)] = dbapi_connection

    def _closed(self, dbapi_connection: Any, record: Any = None) -> None:
        with self._lock:
            self._open.pop(id(dbapi_connection), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def cut_off(self) -> int:
        """Shut down the socket of every open connection; returns how many were shut down."""
        done = 0
        with self._lock:
            for connection in self._open.values():
                fd = _fileno(connection)
                if fd is None:
                    continue
                try:
                    with socket.socket(fileno=os.dup(fd)) as sock:
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    continue  # already closed by the server or the driver
                done += 1
        return done


def _fileno(connection: Any) -> int | None:
    """The socket descriptor of a DBAPI connection, None when closed or unknown."""
    try:
        fileno = getattr(connection, "fileno", None)
        if callable(fileno):  # psycopg2, psycopg
            return int(fileno())
        sock = getattr(connection, "_sock", None)  # PyMySQL
        if isinstance(sock, socket.socket):
            fd = sock.fileno()
            return fd if fd >= 0 else None
    except Exception:  # a closed connection
        return None
    return None
