"""Wiring: settings -> Telegram client -> Dispatcher with the feature routers."""

from __future__ import annotations

import logging

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from manager_bot.config import ManagerSettings
from manager_bot.handlers import start

log = logging.getLogger(__name__)


def build_bot(settings: ManagerSettings) -> Bot:
    """A Bot that talks to `TELEGRAM_API_URL` (the real Bot API or a fake one)."""
    session = AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
    return Bot(settings.manager_bot_token.get_secret_value(), session=session)


def build_dispatcher(settings: ManagerSettings) -> Dispatcher:
    dispatcher = Dispatcher(settings=settings)
    dispatcher.include_routers(start.router)
    return dispatcher


async def run_manager(settings: ManagerSettings) -> None:
    """Runs the manager until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    bot = build_bot(settings)
    dispatcher = build_dispatcher(settings)
    async with bot:
        await dispatcher.start_polling(bot, handle_signals=True)
