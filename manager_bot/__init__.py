"""The manager bot: the Telegram chat that deploys and runs agents."""

from manager_bot import lazy_aiogram

lazy_aiogram.install()  # before anything imports aiogram: seconds off every start
