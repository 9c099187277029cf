"""What the WSGI and ASGI middlewares share: the client's token in, the role, the cookie out.

Private: :mod:`multidb.wsgi` and :mod:`multidb.asgi` are the public faces.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from . import causal as _causal
from .causal import CausalScope
from .config import Role

__all__ = ["READ_METHODS", "RequestPolicy"]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_MAX_HEADER = 16384  # a longer Cookie or token header is not looked into at all


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """Where a request's token comes from, which role its sessions take, what goes back."""

    cookie: str
    header: str
    read_methods: frozenset[str]
    read_role: Role | None
    write_role: Role | None
    max_age: int
    secure: bool
    ttls: dict[str, float]

    @classmethod
    def build(
        cls,
        ttls: dict[str, float],
        *,
        cookie: str,
        header: str,
        read_methods: Iterable[str],
        read_role: Role | None,
        write_role: Role | None,
        secure: bool,
    ) -> RequestPolicy:
        if not cookie or any(c in cookie for c in " ;,=\t\r\n\"'"):
            raise ValueError(f"cookie name {cookie!r}: expected a token without ; , = or spaces")
        if not header or any(c in header for c in " :\t\r\n"):
            raise ValueError(f"header name {header!r}: expected a name without spaces or ':'")
        return cls(
            cookie=cookie,
            header=header,
            read_methods=frozenset(m.upper() for m in read_methods),
            read_role=read_role,
            write_role=write_role,
            max_age=math.ceil(max(ttls.values(), default=0.0)),
            secure=secure,
            ttls=ttls,
        )

    def role(self, method: str) -> Role | None:
        """The role sessions that name none take for a request with ``method``."""
        return self.read_role if method.upper() in self.read_methods else self.write_role

    def seed(self, scope: CausalScope, cookies: str | None, header: str | None) -> None:
        """Merge the positions of the client's cookie and header tokens into ``scope``.

        Malformed or oversized values are ignored (``decode`` logs them), never raised.
        """
        for token in (self._cookie_token(cookies), header):
            if token and len(token) <= _MAX_HEADER:
                scope.merge(_causal.decode(token))
            elif token:
                _causal.log.warning("causal: ignored a %d-char token header", len(token))

    def _cookie_token(self, cookies: str | None) -> str | None:
        if not cookies:
            return None
        if len(cookies) > _MAX_HEADER:
            _causal.log.warning("causal: ignored a %d-char Cookie header", len(cookies))
            return None
        for part in cookies.split(";"):
            name, sep, value = part.partition("=")
            if sep and name.strip() == self.cookie:
                return value.strip().strip('"')
        return None

    def response_headers(self, scope: CausalScope) -> list[tuple[str, str]]:
        """``Set-Cookie`` and the token header when the request wrote, else nothing."""
        if not scope.wrote:
            return []
        token = scope.token(self.ttls)
        if token is None:  # SQLite, or nothing that outlives its TTL: nothing to carry
            return []
        cookie = f"{self.cookie}={token}; Max-Age={self.max_age}; Path=/; HttpOnly; SameSite=Lax"
        if self.secure:
            cookie += "; Secure"
        return [("Set-Cookie", cookie), (self.header, token)]
