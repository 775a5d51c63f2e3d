"""The check every request gets before its route: text a database can store, numbers standard JSON has.

PostgreSQL refuses NUL characters in text, and no driver can encode an unpaired UTF-16 surrogate (``"\\ud800"``
is valid JSON escaping), so such a string in a path, a query or a JSON body would fail deep inside a query or
a tokenizer as a 500, possibly after a row was written. Python's ``json`` also reads ``NaN``, ``Infinity`` and
overflowing numbers (``1e999``) that standard JSON does not have, and they could be stored as such. Each of
these is answered with a 400 naming the field before any route runs, so nothing is stored.
"""

from __future__ import annotations

import email.message
import math
import re
from typing import Any

from fastapi import Request

from api.core.errors import ServiceError
from api.errors import loc_to_param

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _text_problem(text: str) -> str | None:
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    return "a NUL character" if found.group() == "\x00" else "an unpaired UTF-16 surrogate"


def first_bad_value(value: Any) -> tuple[tuple, str] | None:
    """``(location, problem)`` of the first value of decoded JSON that is not standard, storable JSON.

    Walks the value with an explicit stack (no recursion, whatever the nesting), in document order.
    """
    stack: list[tuple[tuple, Any]] = [((), value)]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return loc, f"a non-finite number ({item}); JSON has no NaN or Infinity"
        if isinstance(item, str) and (problem := _text_problem(item)):
            return loc, problem
        if isinstance(item, dict):
            for key in item:
                if problem := _text_problem(key):
                    return (*loc, key), f"{problem} in its name"
            stack.extend(((*loc, key), child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend(((*loc, index), child) for index, child in reversed(list(enumerate(item))))
    return None


def _is_json(content_type: str | None) -> bool:
    """As FastAPI decides whether to read a body as JSON: ``application/json`` or ``application/*+json``."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _refuse(param: str | None, problem: str) -> ServiceError:
    return ServiceError(400, f"`{param or 'body'}` contains {problem}.", code="invalid_value", param=param)


async def check_request_input(request: Request) -> None:
    """App-wide dependency: path and query values, then the JSON body (already parsed by FastAPI: not twice)."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and (problem := _text_problem(value)):
            raise _refuse(name, problem)
    for name, value in request.query_params.multi_items():
        if problem := _text_problem(name) or _text_problem(value):
            raise _refuse(name, problem)
    if request.method not in ("POST", "PUT", "PATCH") or not _is_json(request.headers.get("content-type")):
        return
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # malformed JSON: FastAPI answers it with its own 400
        return
    if (bad := first_bad_value(body)) is not None:
        raise _refuse(loc_to_param(("body", *bad[0])), bad[1])
