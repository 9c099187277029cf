"""Celery: a job enqueued right after a write reads that write (SPEC 6).

>>> import multidb.celery
>>> multidb.celery.install(app, dbs)  # doctest: +SKIP

The enqueuing code's causal token rides in each task message's headers
(``multidb_token``, added by a ``before_task_publish`` handler); the worker
runs each task of ``app`` in a scope seeded from it (``task_prerun`` opens
it, ``task_postrun`` closes it), so its reads go to a replica that has
applied the write, or to the primary. A task run eagerly (``apply()``,
``task_always_eager``) keeps its caller's scope. Like GitLab's Sidekiq
``data_consistency``, with positions instead of a fixed delay.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import Any

from celery import Celery, signals

from . import causal as _causal
from .causal import CausalScope
from .registry import Registry

__all__ = ["HEADER", "install"]

HEADER = "multidb_token"


def install(app: Celery, dbs: Registry) -> None:
    """Carry causal tokens from where ``app``'s tasks are sent to where they run.

    Connects signal handlers (once per ``app`` and ``dbs``); the publishing
    one adds the token to every task message this process sends, whatever
    its app, merged with a token already there.
    """
    _Carrier(app, dbs).connect()


class _Carrier:
    def __init__(self, app: Celery, dbs: Registry) -> None:
        self.app = app
        self.dbs = dbs
        self._open: dict[str, AbstractContextManager[CausalScope]] = {}
        self._lock = threading.Lock()

    def connect(self) -> None:
        uid = f"multidb-{id(self.app)}-{id(self.dbs)}"
        signals.before_task_publish.connect(self._publish, weak=False, dispatch_uid=uid)
        signals.task_prerun.connect(self._enter, weak=False, dispatch_uid=uid)
        signals.task_postrun.connect(self._exit, weak=False, dispatch_uid=uid)

    def _publish(self, headers: dict[str, Any] | None = None, **_: Any) -> None:
        token = self.dbs.causal_token()
        if token is None or headers is None:
            return
        held = headers.get(HEADER)
        if isinstance(held, str) and held:
            merged = _causal.decode(held)
            for database, position in _causal.decode(token).items():
                old = merged.get(database)
                merged[database] = position if old is None else old.later(position)
            token = _causal.encode(merged)
        headers[HEADER] = token

    def _enter(self, task_id: str = "", task: Any = None, **_: Any) -> None:
        if task is None or getattr(task, "app", None) is not self.app:
            return
        request = task.request
        token = request.get(HEADER) or (request.headers or {}).get(HEADER)
        eager = bool(request.is_eager)
        scope = _causal.open_scope(token if isinstance(token, str) else None, inherit=eager)
        scope.__enter__()
        with self._lock:
            self._open[task_id] = scope

    def _exit(self, task_id: str = "", **_: Any) -> None:
        with self._lock:
            scope = self._open.pop(task_id, None)
        if scope is not None:
            scope.__exit__(None, None, None)
