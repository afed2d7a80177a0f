"""A broadcast to many users through the fake Bot API, limited and flaky like Telegram.

Prints one JSON object:
{"recipients": n, "rate_ratio": achieved/limit, "lost": n, "duplicates": n, ...}
The fake server allows `--rate` sends per second (429 beyond) and answers a
random 0.1% of sends with 429 retry_after=1; the broadcaster sends at the same
configured rate. Targets: rate_ratio >= 0.95, nothing lost, no duplicates.
Usage: python bench/broadcast.py [--recipients 10000] [--rate 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from manager_bot.app import build_bot  # noqa: E402
from manager_bot.config import ManagerSettings  # noqa: E402
from manager_bot.db.migrate import upgrade  # noqa: E402
from manager_bot.db.models import User  # noqa: E402
from manager_bot.db.session import Database  # noqa: E402
from manager_bot.services.broadcast import Broadcaster, Content  # noqa: E402
from runtime.settings_loading import load_settings  # noqa: E402
from tests.fakes.telegram_api import FakeTelegram  # noqa: E402

ADMIN = 1
RANDOM_429 = 0.001
NEEDLE = "Bench broadcast"


async def main(recipients: int, rate: float) -> dict[str, Any]:
    telegram = FakeTelegram()
    await telegram.start()
    manager = telegram.add_bot(username="bench_manager_bot")
    telegram.set_rate_limit(manager, rate)
    telegram.set_random_429(manager, RANDOM_429, seed=7)
    user_ids = [1_000_000 + i for i in range(recipients)]
    for user_id in [ADMIN, *user_ids]:
        telegram.user(manager, user_id=user_id)
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite+aiosqlite:///{Path(scratch) / 'broadcast.db'}"
        await upgrade(url)
        database = Database(url)
        async with database.session() as session:
            await session.execute(
                insert(User), [{"id": uid, "first_name": "U"} for uid in user_ids]
            )
        settings = load_settings(
            ManagerSettings,
            {"MANAGER_BOT_TOKEN": manager.token, "TELEGRAM_API_URL": telegram.url},
        )
        bot = build_bot(settings)
        broadcaster = Broadcaster(bot=bot, database=database, rate=rate)
        progress = await bot.send_message(ADMIN, "📣 …")
        started = time.perf_counter()
        broadcast_id, count = await broadcaster.start(
            author_id=ADMIN, content=Content(NEEDLE), audience="all",
            progress=(ADMIN, progress.message_id),
        )  # fmt: skip
        await broadcaster.wait(broadcast_id)
        seconds = time.perf_counter() - started
        await bot.session.close()
        await database.close()
    copies = Counter(
        int(call.params["chat_id"])
        for call in telegram.calls("sendMessage", bot=manager)
        if call.status == 200 and call.params.get("text") == NEEDLE
    )
    throttled = sum(1 for call in telegram.calls("sendMessage", bot=manager) if call.status == 429)
    await telegram.stop()
    delivered = sum(1 for uid in user_ids if copies.get(uid))
    return {
        "recipients": count,
        "rate_ratio": round(delivered / seconds / rate, 3),
        "lost": recipients - delivered,
        "duplicates": sum(n - 1 for n in copies.values() if n > 1),
        "seconds": round(seconds, 1),
        "answered_429": throttled,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=30.0)
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.recipients, arguments.rate))))
