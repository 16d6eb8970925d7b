"""What a request body must be: JSON (by content type), with no key given twice."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from core.errors import OracleError


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
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
