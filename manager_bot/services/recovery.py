"""After a start: finish what a manager that died midway left unfinished, and say so.

Every user action is written as an operation before it does anything. Those
still running at start-up are finished here: a deploy is completed (its agent
applied, its webhook set, its readiness awaited) or rolled back, and its
progress message edited with the outcome; any other action is converged by the
reconciler and its user told.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError

from manager_bot import texts
from manager_bot.backends.base import BackendError
from manager_bot.db.models import Operation, OperationStatus, utcnow
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.i18n import Languages, language_of, speaking_to
from manager_bot.services.deployer import Deployer
from manager_bot.services.errors import DeployFailed
from manager_bot.services.reconciler import Reconciler
from manager_bot.views.errors import explain

log = logging.getLogger(__name__)
# A deploy's steps before its agent row exists (checks, getMe, the insert) take seconds.
FIRST_PHASE = timedelta(minutes=5)


def _aware(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back; they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Recovery:
    def __init__(
        self,
        *,
        database: Database,
        deployer: Deployer,
        reconciler: Reconciler,
        bot: Bot,
        languages: Languages | None = None,
    ) -> None:
        """`languages`: each user is told in their language (English without)."""
        self._languages = languages
        self._db = database
        self._deployer = deployer
        self._reconciler = reconciler
        self._bot = bot

    async def finish_unfinished(self) -> int:
        """Every operation left running; returns how many were finished or rolled back."""
        async with self._db.session() as session:
            unfinished = list(await Repositories(session).operations.unfinished())
        for operation in unfinished:
            try:
                await self._finish(operation)
            except Exception:  # one stuck operation must not keep the manager down
                log.exception("operation %s could not be finished; it stays open", operation.id)
        return len(unfinished)

    async def finish_abandoned(self) -> int:
        """On a new leader, while other replicas still serve users: only the operations
        nobody is carrying out. One that holds its agent's lock (shared across replicas:
        agent_locks.py) is in flight on a live replica; once we get the lock, it is still
        running only if its replica died. A deploy that died before its agent existed
        holds no lock: it counts as abandoned once older than any such first phase."""
        async with self._db.session() as session:
            unfinished = list(await Repositories(session).operations.unfinished())
        finished = 0
        for operation in unfinished:
            if operation.agent_id:
                async with self._deployer.locks.hold(operation.agent_id):
                    still = await self._still_running(operation.id)
            else:
                still = utcnow() - _aware(operation.started_at) > FIRST_PHASE
            if not still:
                continue
            try:
                await self._finish(operation)
                finished += 1
            except Exception:
                log.exception("operation %s could not be finished; it stays open", operation.id)
        return finished

    async def _still_running(self, operation_id: int) -> bool:
        async with self._db.session() as session:
            running = await Repositories(session).operations.unfinished()
        return any(operation.id == operation_id for operation in running)

    async def _finish(self, operation: Operation) -> None:
        language = await language_of(self._languages, operation.chat_id or operation.actor_id)
        with speaking_to(self._languages, language):
            await self._finish_in_language(operation)

    async def _finish_in_language(self, operation: Operation) -> None:
        agent = await self._deployer.stored(operation.agent_id) if operation.agent_id else None
        username = agent.bot_username if agent is not None else texts.YOUR_BOT
        if operation.kind == "deploy" and not operation.agent_id:  # died before it began
            status, text = OperationStatus.FAILED, texts.DEPLOY_INTERRUPTED
        elif operation.kind == "deploy" and operation.agent_id:
            try:
                await self._deployer.resume_deploy(
                    operation.agent_id,
                    actor_id=operation.actor_id,
                    begun=_aware(operation.started_at),
                )
            except DeployFailed as failure:
                status, text = (
                    OperationStatus.FAILED,
                    texts.DEPLOY_FAILED.format(
                        step=texts.STEP_LABELS.get(failure.step, failure.step),
                        reason=explain(failure),
                    ),
                )
            else:
                status, text = OperationStatus.DONE, texts.DEPLOYED.format(username=username)
        else:
            try:
                if operation.agent_id:
                    seen = await self._deployer.queries.observed(operation.agent_id)
                    await self._reconciler.converge(operation.agent_id, seen)
            except BackendError as error:
                log.warning("operation %s: the cluster is away (%s)", operation.id, error)
                status, text = (
                    OperationStatus.FAILED,
                    texts.RECOVERED_LATER.format(action=operation.kind, username=username),
                )
            else:
                status, text = (
                    OperationStatus.DONE,
                    texts.RECOVERED.format(action=operation.kind, username=username),
                )
        # Told first, closed after: a manager killed in between tells again at its next
        # start (twice is better than never).
        await self._tell(operation, text)
        async with self._db.session() as session:
            await Repositories(session).operations.finish(operation.id, status, "after a restart")

    async def _tell(self, operation: Operation, text: str) -> None:
        """Edit the progress message if there is one, else write; never raise."""
        if operation.chat_id is None:
            return
        try:
            if operation.message_id is not None:
                await self._bot.edit_message_text(
                    text, chat_id=operation.chat_id, message_id=operation.message_id
                )
            else:
                await self._bot.send_message(operation.chat_id, text)
        except TelegramAPIError as error:
            log.warning("operation %s: user not told (%s)", operation.id, type(error).__name__)
