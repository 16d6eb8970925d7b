"""What a request body must be: JSON (by content type), nested at most MAX_DEPTH levels, with
no key given twice."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from core.errors import OracleError

# No body of the API nests deeper than a few levels (a run's config at most 8, which its schema
# checks); this bound is for the parser: json's decoder recurses once per level and, a few
# thousand levels down, raises RecursionError, which FastAPI answers as a bare 400.
MAX_DEPTH = 32
# The tokens that decide nesting: strings (a key when a colon follows) and brackets.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"(\s*:)?|[\[\]{}]')


class UnsupportedMediaType(OracleError):
    """A body was sent with a content type other than JSON."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # json.loads would keep the last one silently; a worker that sends two values for
            # one field has a bug we should tell it about.
            raise json.JSONDecodeError(f"duplicate key {key!r}", "", 0)
        result[key] = value
    return result


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)


def too_deep(raw: bytes) -> tuple[str, ...] | None:
    """The top-level key (or the body, `()`) under which `raw` nests deeper than MAX_DEPTH;
    None if it does not. Scans the tokens without parsing, so a deep body never reaches the
    parser; a body with few brackets (every worker's) costs two byte counts."""
    if raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH:
        return None
    depth = 0
    key: bytes | None = None  # the last key seen at the top level
    for token in _TOKENS.finditer(raw):
        text = token.group()
        if text in (b"{", b"["):
            depth += 1
            if depth > MAX_DEPTH:
                return () if key is None else (_key_name(key),)
        elif text in (b"}", b"]"):
            depth -= 1
        elif token.group(1) is not None and depth == 1:
            key = text[: token.start(1) - token.start()]
    return None


def _key_name(key: bytes) -> str:
    try:
        name = json.loads(key)
    except ValueError:
        name = key.decode("utf-8", "replace").strip('"')
    return str(name)[:64]


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                # JSON between systems is UTF-8 (RFC 8259); FastAPI would answer a bare 400.
                raise json.JSONDecodeError(f"the body is not UTF-8 ({e.reason})", "", 0) from e
            self._json = _DECODER.decode(text)
        return self._json


class JSONRoute(APIRoute):
    """Routes whose bodies are strict JSON; a body of another content type gets 415."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def strict_handler(request: Request) -> Response:
            content_type = request.headers.get("content-type", "")
            media = content_type.split(";", 1)[0].strip().lower()
            if takes_body and media and media != "application/json" and not media.endswith("+json"):
                raise UnsupportedMediaType(
                    f"the body must be JSON (content-type application/json), not {media!r}"
                )
            strict = StrictJSONRequest(request.scope, request.receive)
            if takes_body:
                try:
                    raw = await strict.body()  # cached: the handler reads it again for free
                except ClientDisconnect:  # gone, or refused (413) by BodyLimit: as FastAPI does
                    return await handler(strict)
                where = too_deep(raw)
                if where is not None:
                    name = where[0] if where else "the body"
                    raise RequestValidationError(
                        [
                            {
                                "type": "too_deep",
                                "loc": ("body", *where),
                                "msg": f"{name} nests deeper than {MAX_DEPTH} levels",
                                "input": None,
                            }
                        ]
                    )
            return await handler(strict)

        return strict_handler
