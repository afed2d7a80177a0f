"""Baseline for bench/runtime.py: a minimal aiogram webhook echo bot.

Env: BOT_TOKEN, TELEGRAM_API_URL, PORT, WEBHOOK_SECRET. `/healthz` answers once
getMe succeeded, the same readiness the runtime's `/readyz` means.
"""

from __future__ import annotations

import asyncio
import os

from aiogram import Bot, Dispatcher, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import Message
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web

router = Router()


@router.message()
async def echo(message: Message) -> None:
    await message.answer(f"echo: {message.text}")


async def main() -> None:
    session = AiohttpSession(api=TelegramAPIServer.from_base(os.environ["TELEGRAM_API_URL"]))
    bot = Bot(os.environ["BOT_TOKEN"], session=session)
    dispatcher = Dispatcher()
    dispatcher.include_router(router)
    await bot.get_me()
    app = web.Application()
    SimpleRequestHandler(dispatcher, bot, secret_token=os.environ["WEBHOOK_SECRET"]).register(
        app, path="/webhook/{agent_id}"
    )

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(os.environ["PORT"])).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
