"""Bearer tokens with roles; every comparison is constant-time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from fastapi import Request

from core.errors import OracleError


class Role(IntEnum):
    """Each role may do what the ones below it may."""

    reader = 1
    worker = 2
    admin = 3


class Unauthorized(OracleError):
    """No token, or a token that is not configured."""


class Forbidden(OracleError):
    """A valid token whose role may not do this."""


@dataclass(frozen=True)
class Principal:
    role: Role
    name: str  # a fingerprint of the token, safe to log


@dataclass(frozen=True)
class TokenTable:
    entries: tuple[tuple[bytes, Role], ...]

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    @classmethod
    def parse(cls, text: str | None) -> TokenTable:
        entries: list[tuple[bytes, Role]] = []
        for item in (text or "").replace("\n", ",").split(","):
            item = item.strip()
            if not item or item.startswith("#"):
                continue
            role, sep, token = item.partition(":")
            if not sep or not token.strip():
                raise ValueError(f"a token entry must read role:token, got {role!r}:…")
            if role.strip() not in Role.__members__:
                raise ValueError(
                    f"unknown role {role.strip()!r}; use one of {', '.join(Role.__members__)}"
                )
            entries.append((_digest(token.strip()), Role[role.strip()]))
        return cls(tuple(entries))

    @classmethod
    def load(cls, tokens: str | None, tokens_file: Path | None) -> TokenTable:
        text = tokens or ""
        if tokens_file is not None:
            text += "\n" + tokens_file.read_text()
        return cls.parse(text)

    def identify(self, authorization: str | None) -> Principal:
        if not self.enabled:
            return Principal(Role.admin, "anonymous")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send 'Authorization: Bearer <token>'")
        digest = _digest(token.strip())
        found: Role | None = None
        for known, role in self.entries:  # no early exit: the time does not depend on a match
            if hmac.compare_digest(known, digest):
                found = role
        if found is None:
            raise Unauthorized("the token is not valid")
        return Principal(found, f"{found.name}:{digest.hex()[:8]}")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def require(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that admits tokens of `role` or above and returns the caller."""

    async def dependency(request: Request) -> Principal:
        tokens: TokenTable = request.app.state.oracle.tokens
        principal = tokens.identify(request.headers.get("authorization"))
        if principal.role < role:
            raise Forbidden(f"this needs the {role.name} role; the token has {principal.role.name}")
        request.state.principal = principal
        return principal

    return dependency
