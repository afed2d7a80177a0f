"""Bans across replicas: each replica re-reads the banned ids from the database.

`BanList` keeps the ids in memory so the ban check costs no query per update. With
several replicas a ban is written to the database by the one that handled /ban; the
others see it at their next refresh. So a ban holds everywhere within
`every` seconds (one second by default) plus one query, and at once on the replica
that gave it. One small query a second per replica; the ban check stays free.
"""

from __future__ import annotations

import asyncio
import logging

from manager_bot.db.session import Database
from manager_bot.services.admin import BanList
from runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class BanRefresh:
    def __init__(self, bans: BanList, database: Database, *, every: float = 1.0) -> None:
        self._bans = bans
        self._database = database
        self._every = every
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping:  # as UpdateInbox's sweep: a lost cancel ends it too
            await asyncio.sleep(self._every)
            try:
                await self._bans.load(self._database)
            except Exception as error:  # the database away for a moment: the old list holds
                log.warning("bans not refreshed: %s", type(error).__name__)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await cancel_and_wait(self._task)
