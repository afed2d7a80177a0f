"""Keep aiogram's parsed-response models alive between calls.

aiogram parses every Bot API answer with `Response[method.__returning__]`, a
pydantic generic. Pydantic caches parameterised generics in a weak-value
dictionary, so once a call is done the class can be collected and the next
call builds it again (schema generation: milliseconds). Under load that was
about a sixth of the manager's CPU (bench/manager.py, py-spy). Holding one
strong reference per returning type makes every later call a cache hit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.methods.base import Response, TelegramType

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import TelegramMethod

_KEPT: dict[Any, Any] = {}


class KeepResponseModels(BaseRequestMiddleware):
    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        # Keyed by the method's class: hashing a typing generic such as list[Update]
        # on every call costs more than a class lookup.
        kind = type(method)
        if kind not in _KEPT:
            _KEPT[kind] = Response[method.__returning__]  # type: ignore[name-defined]
        return await make_request(bot, method)
