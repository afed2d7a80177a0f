"""Baseline for the benches: a minimal aiogram echo bot, one sendMessage per message.

Env: BOT_TOKEN, TELEGRAM_API_URL, and MODE: `webhook` (the default, for
bench/runtime.py) or `polling` (for bench/manager.py, which polls as the manager does).
Webhook mode also needs PORT and WEBHOOK_SECRET; its `/healthz` answers once getMe
succeeded, the same readiness the runtime's `/readyz` means.
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


async def serve_webhook(dispatcher: Dispatcher, bot: Bot) -> None:
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


async def main() -> None:
    session = AiohttpSession(api=TelegramAPIServer.from_base(os.environ["TELEGRAM_API_URL"]))
    bot = Bot(os.environ["BOT_TOKEN"], session=session)
    dispatcher = Dispatcher()
    dispatcher.include_router(router)
    mode = os.environ.get("MODE", "webhook")
    if mode == "polling":
        # SIGINT/SIGTERM stop polling and close the session (aiogram's own handlers).
        await dispatcher.start_polling(bot)
    elif mode == "webhook":
        await serve_webhook(dispatcher, bot)
    else:
        raise SystemExit(f"MODE must be webhook or polling, not {mode!r}")


if __name__ == "__main__":
    asyncio.run(main())
