"""The deployer: every change to an agent's life goes through here.

Order of work, always: validate, write the desired state and an audit entry,
ask the backend to make it so (idempotently), point the bot's webhook, report.
Every action on an existing agent holds that agent's lock (shared with the
reconciler and the health sweep's repairs) and reads its row inside it. A
failed first deploy is rolled back (objects removed, webhook cleared, agent
marked deleted) so nobody is left with half an agent; whatever a rollback or a
failed change leaves behind, the reconciler (services/reconciler.py) converges,
because it compares the database with what runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from pydantic import SecretStr

from manager_bot.backends.base import (
    AgentSecrets,
    AgentSpec,
    Backend,
    BackendError,
    Observed,
    ObservedState,
)
from manager_bot.crypto import Vault
from manager_bot.db.models import (
    Agent,
    DesiredState,
    OperationStatus,
    as_utc,
    new_agent_id,
    utcnow,
)
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.gateway.credentials import credential_hash, new_credential
from manager_bot.metrics import DEPLOYS
from manager_bot.services.agent_locks import AgentLocks
from manager_bot.services.agent_profile import (
    MAX_MANAGED_LISTED_USERS,
    Access,
    AccessMode,
    access_of,
    check_description,
    profile_of,
)
from manager_bot.services.agent_queries import AgentQueries, owned
from manager_bot.services.errors import (
    AccessProblem,
    BotAlreadyUsed,
    ConfigProblem,
    DeployFailed,
    DeployThrottled,
    ErrorCode,
    InvalidAccess,
    InvalidAgentConfig,
    InvalidBotToken,
    NoPreviousRevision,
    QuotaReached,
    TokenOfAnotherBot,
    TokenProblem,
    cluster_code,
)
from manager_bot.services.providers import Provider, find_provider, is_model_id, sees_images
from manager_bot.services.telegram import (
    AgentTelegram,
    AgentTokenError,
    BotIdentity,
)

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 4000
PROFILES_PER_RECONCILE = 20  # profiles set again per reconcile run (3-4 Bot API calls each)
WEBHOOK_CLEAR_RETRIES = (1.0, 2.0)  # seconds between tries of a deleted bot's deleteWebhook
T = TypeVar("T")


class DeployStep(enum.StrEnum):
    SECRET = "secret"
    WORKLOAD = "workload"
    ROUTE = "route"
    WEBHOOK = "webhook"
    READY = "ready"


Progress = Callable[[DeployStep], Awaitable[None]]


Announce = Callable[[Agent], Awaitable[None]]


async def no_progress(step: DeployStep) -> None:
    return None


@dataclass(frozen=True)
class NewAgent:
    """What the wizard collected; plaintext secrets live only in memory until encrypted."""

    owner_id: int
    bot_token: str
    provider: str
    model: str
    system_prompt: str
    llm_api_key: str | None = None
    managed: bool = False
    llm_base_url: str | None = None  # the "custom" provider: the user's own endpoint
    # Where the user watches it: a manager that dies midway edits this message when it
    # finishes or rolls the deploy back at its next start.
    chat_id: int | None = None
    progress_message_id: int | None = None


@dataclass(frozen=True)
class DeployerConfig:
    # "webhook": the manager sets each agent's webhook (Kubernetes);
    # "polling": it deletes it so the local runtime can poll.
    mode: str
    public_url: str | None
    telegram_api_url: str
    max_agents_per_user: int
    gateway_url: str  # the LLM base URL agents get (their only way to a model)
    installation_id: str = ""  # stamped on every object (the reconciler's orphan rule)
    memory_idle_days: int = 30  # agents forget chats idle this long (MEMORY_IDLE_DAYS)
    ready_timeout: float = 90.0
    ready_poll_interval: float = 0.5
    # At most this many deploys per user in the window (counted in the audit log,
    # so a restart does not reset it).
    deploys_per_window: int = 5
    deploy_window: timedelta = timedelta(minutes=10)


class Deployer:
    """Use cases: deploy, change, revert, restart, stop, resume, delete, logs, reconcile."""

    def __init__(
        self,
        *,
        database: Database,
        vault: Vault,
        backend: Backend,
        telegram: AgentTelegram,
        providers: tuple[Provider, ...],
        config: DeployerConfig,
        locks: AgentLocks | None = None,
    ) -> None:
        """`locks`: shared across replicas when several run (agent_locks.py)."""
        self._db = database
        self._vault = vault
        self._backend = backend
        self._telegram = telegram
        self._providers = providers
        self._config = config
        self.locks = locks or AgentLocks()  # the reconciler holds the same ones
        # What users and jobs read about agents: a module of its own (writes are here).
        self.queries = AgentQueries(
            database=database, vault=vault, backend=backend, telegram=telegram,
            max_agents_per_user=config.max_agents_per_user,
        )  # fmt: skip

    @property
    def steps(self) -> tuple[DeployStep, ...]:
        """The steps a deploy reports, in order (no route without a cluster)."""
        if self._config.mode == "polling":
            return (DeployStep.SECRET, DeployStep.WORKLOAD, DeployStep.WEBHOOK, DeployStep.READY)
        return tuple(DeployStep)

    @property
    def installation_id(self) -> str:
        return self._config.installation_id

    @property
    def max_agents_per_user(self) -> int:
        return self._config.max_agents_per_user

    def webhook_url(self, agent_id: str) -> str:
        return f"{self._config.public_url}/webhook/{agent_id}"

    # -- deploy ------------------------------------------------------------------------

    async def check_token(self, token: str, *, owner_id: int) -> BotIdentity:
        """getMe, plus: not already running as someone's agent."""
        identity = await self._identify(token)
        async with self._db.reading() as session:
            if await Repositories(session).agents.bot_in_use(identity.id):
                raise BotAlreadyUsed(identity.username)
        return identity

    async def deploy(
        self,
        request: NewAgent,
        *,
        progress: Progress = no_progress,
        announce: Announce | None = None,
    ) -> Agent:
        """Creates and starts a new agent, reporting each step; rolls back on failure.

        The operation is written first, with the progress message, so a manager that dies
        at any point (even before the agent is stored) tells the user at its next start.
        `announce` tells the user the agent is live; the operation is closed only after
        it, so a manager that dies before it has told them tells them at its next start.
        If `announce` raises, the operation is closed all the same (the agent is live)
        and its error is raised, for the caller to apologise.
        The new agent's lock is held from before its row exists until the operation is
        closed: a new leader looking for abandoned operations waits for it, then finds
        this one closed, and never finishes it a second time (recovery.finish_abandoned)."""
        outcome = "refused"
        agent_id = new_agent_id()
        async with self._db.session() as session:
            operation = await Repositories(session).operations.start(
                kind="deploy", agent_id=None, actor_id=request.owner_id,
                chat_id=request.chat_id, message_id=request.progress_message_id,
            )  # fmt: skip
        async with self.locks.hold(agent_id):
            try:
                agent = await self._deploy(request, progress, operation, agent_id)
                outcome = "ok"
            except DeployFailed as failure:
                outcome = "failed"
                await self._finish_operation(operation, OperationStatus.FAILED, failure.hint)
                raise
            except BaseException as error:
                await self._finish_operation(
                    operation, OperationStatus.FAILED, type(error).__name__
                )
                raise
            finally:
                DEPLOYS.labels(outcome).inc()
            if announce is not None:
                try:
                    await announce(agent)
                except Exception:
                    await self._finish_operation(operation, OperationStatus.DONE, "not told")
                    raise
            await self._finish_operation(operation, OperationStatus.DONE)
        return agent

    async def deploy_wait(self, owner_id: int, *, locked: Repositories | None = None) -> int:
        """Seconds until this user may start another deploy (0: now).

        Without `locked`: a cheap read of what is committed (the chat asks before it
        deploys), which a concurrent deploy may make stale. `_deploy` asks again with the
        repositories of its transaction holding the user's row, and only that answer counts.
        """
        since = utcnow() - self._config.deploy_window
        async with contextlib.AsyncExitStack() as stack:
            repos = locked or Repositories(await stack.enter_async_context(self._db.reading()))
            recent = await repos.audit.times(
                actor_id=owner_id, action="deploy", outcome="started", since=since
            )
        if len(recent) < self._config.deploys_per_window:
            return 0
        oldest = as_utc(recent[-self._config.deploys_per_window])
        return max(1, int((oldest + self._config.deploy_window - utcnow()).total_seconds()) + 1)

    async def _deploy(
        self, request: NewAgent, progress: Progress, operation: int, agent_id: str
    ) -> Agent:
        """The deploy itself, with `agent_id`'s lock held (`deploy`). The throttle is
        checked once, in the transaction below: the chat asked just before (`deploy_wait`),
        and a third read here only cost every deploy a statement."""
        provider = self._check_config(
            request.provider, request.model, request.llm_api_key, request.llm_base_url
        )
        prompt = self._check_prompt(request.system_prompt)
        identity = await self._identify(request.bot_token)
        credential = new_credential()
        async with self._db.session() as session:
            repos = Repositories(session)
            # Held until commit: the owner's other deploys wait here, so the throttle and
            # quota checked below still hold at the insert. Two owners deploying one bot
            # meet at the one-live-agent-per-bot index instead.
            await repos.users.lock(request.owner_id)
            wait = await self.deploy_wait(request.owner_id, locked=repos)
            if wait:
                raise DeployThrottled(wait)
            if (
                await repos.agents.count_active(request.owner_id)
                >= self._config.max_agents_per_user
            ):
                raise QuotaReached(self._config.max_agents_per_user)
            if await repos.agents.bot_in_use(identity.id):
                raise BotAlreadyUsed(identity.username)
            agent = await repos.agents.add_live(
                Agent(
                    id=agent_id,
                    owner_id=request.owner_id,
                    name=identity.first_name or identity.username,
                    bot_id=identity.id,
                    bot_username=identity.username,
                    managed=request.managed,
                    token_encrypted=self._vault.encrypt(request.bot_token),
                    webhook_secret_encrypted=self._vault.encrypt(secrets.token_urlsafe(32)),
                    provider=provider.name,
                    model=request.model,
                    llm_api_key_encrypted=self._encrypt_optional(request.llm_api_key),
                    llm_base_url=request.llm_base_url if provider.is_custom else None,
                    gateway_key_encrypted=self._vault.encrypt(credential),
                    gateway_key_hash=credential_hash(credential),
                    system_prompt=prompt,
                    revision=1,
                    desired_state=DesiredState.RUNNING.value,
                )
            )
            if agent is None:  # another owner's deploy of this bot committed first
                raise BotAlreadyUsed(identity.username)
            await repos.revisions.record(agent, created_by=request.owner_id)
            await repos.audit.record(
                actor_id=request.owner_id, action="deploy", agent_id=agent.id, outcome="started"
            )
            await repos.operations.concerns(operation, agent.id)
        await self._report(progress, DeployStep.SECRET)
        return await self._finish_deploy(
            agent, actor_id=request.owner_id, progress=progress, first_deploy=True
        )

    async def _finish_deploy(
        self, agent: Agent, *, actor_id: int, progress: Progress, first_deploy: bool,
        audited: bool = False,
    ) -> Agent:  # fmt: skip
        """Apply, point the webhook (`first_deploy`: dropping what the bot had pending),
        wait until ready, set the bot's profile; the agent as stored then. Any failure but
        the profile's, expected or not, ends in a rollback and a DeployFailed the user is
        shown (never a half-made agent). `audited`: its success is in the audit log
        already (a run that died after writing it), not to be written twice."""
        try:
            observed = await self._start(agent, first_deploy=first_deploy, progress=progress)
        except Exception as error:
            failure = (
                error
                if isinstance(error, DeployFailed)
                else DeployFailed(DeployStep.WORKLOAD, f"unexpected: {error!r}")
            )
            if not isinstance(error, DeployFailed):
                log.exception("deploy of agent %s failed unexpectedly", agent.id)
            await self._roll_back(agent, actor_id=actor_id, failure=failure)
            raise failure from None
        synced = await self._push_profile(agent)  # never fails the deploy: reconcile retries
        # One transaction for what the deploy learnt: a manager killed before it finishes
        # the deploy again at its next start (the operation is still running).
        async with self._db.session() as session:
            repos = Repositories(session)
            await self._write_observed(repos, observed)
            if synced:
                await repos.agents.write(agent.id, profile_synced=True)
            if not audited:
                await repos.audit.record(
                    actor_id=actor_id, action="deploy", agent_id=agent.id, outcome="ok"
                )
            stored = await repos.agents.get(agent.id)
        assert stored is not None  # the agent's lock is held: nobody deleted it meanwhile
        return stored

    async def resume_deploy(self, agent_id: str, *, actor_id: int | None, begun: datetime) -> Agent:
        """A deploy the manager did not finish (it died midway; it had `begun` then):
        finish it now, or roll it back. Raises DeployFailed when rolled back."""
        async with self.locks.hold(agent_id):
            agent = await self.stored(agent_id)
            if agent is None or agent.desired_state != DesiredState.RUNNING:
                raise DeployFailed(
                    DeployStep.WORKLOAD,
                    "stopped or deleted meanwhile",
                    code=ErrorCode.AGENT_CHANGED,
                )
            async with self._db.session() as session:
                # A run that died telling the user had written its success already.
                audited = await Repositories(session).audit.recorded(
                    action="deploy", agent_id=agent_id, outcome="ok", since=begun
                )
            # A run that died after the webhook step (even after the agent was live,
            # before the user was told): what Telegram holds now is the agent's own.
            return await self._finish_deploy(
                agent, actor_id=actor_id or agent.owner_id, progress=no_progress,
                first_deploy=not await self._webhook_points_at(agent), audited=audited,
            )  # fmt: skip

    async def _webhook_points_at(self, agent: Agent) -> bool:
        """Telegram already posts this bot's updates to the agent (webhook mode)."""
        if self._config.mode == "polling":
            return False  # nothing to tell by; the agent polls what is pending anyway
        try:
            status = await self._telegram.webhook_status(self._vault.decrypt(agent.token_encrypted))
        except AgentTokenError:
            return False  # the deploy's own webhook step says what is wrong
        return status.url == self.webhook_url(agent.id)

    @staticmethod
    async def _report(progress: Progress, step: DeployStep) -> None:
        """Progress is shown to the user, and a nicety: its failure (a 429 on an edit)
        never stops the deploy."""
        try:
            await progress(step)
        except Exception as error:
            log.info("progress of step %s not shown: %s", step, type(error).__name__)

    async def _finish_operation(
        self, operation_id: int, status: OperationStatus, detail: str = ""
    ) -> None:
        async with self._db.session() as session:
            await Repositories(session).operations.finish(operation_id, status, detail)

    @contextlib.asynccontextmanager
    async def _operation(self, kind: str, agent_id: str, actor_id: int) -> AsyncIterator[None]:
        """Written before the action does anything: at the next start, an operation still
        running is finished (converged) and its user told."""
        async with self._db.session() as session:
            operation = await Repositories(session).operations.start(
                kind=kind, agent_id=agent_id, actor_id=actor_id, chat_id=actor_id
            )
        try:
            yield
        except BaseException as error:
            await self._finish_operation(operation, OperationStatus.FAILED, type(error).__name__)
            raise
        await self._finish_operation(operation, OperationStatus.DONE)

    async def _start(self, agent: Agent, *, first_deploy: bool, progress: Progress) -> Observed:
        """Apply, point the webhook, wait for readiness (what was seen last is returned,
        for the caller to store); each failure names its step."""
        spec = self.spec_for(agent)
        try:
            await self._backend.apply(spec)
        except BackendError as error:
            raise DeployFailed(
                DeployStep.WORKLOAD, str(error), code=cluster_code(error.status)
            ) from None
        await self._report(progress, DeployStep.WORKLOAD)
        if DeployStep.ROUTE in self.steps:
            await self._report(progress, DeployStep.ROUTE)
        await self.point_webhook(spec, drop_pending_updates=first_deploy)
        await self._report(progress, DeployStep.WEBHOOK)
        observed = await self._wait_until_ready(agent.id)
        await self._report(progress, DeployStep.READY)
        return observed

    async def _roll_back(self, agent: Agent, *, actor_id: int, failure: DeployFailed) -> None:
        """Leave nothing half-made: remove objects, clear the webhook, forget the agent."""
        try:
            await self._backend.delete(agent.id)
        except BackendError as error:
            log.warning("rollback of agent %s left objects for reconcile: %s", agent.id, error)
        # The token may be the problem, or Telegram is away: then nothing points at us anyway.
        with contextlib.suppress(AgentTokenError):
            await self._telegram.delete_webhook(self._vault.decrypt(agent.token_encrypted))
        async with self._db.session() as session:
            repos = Repositories(session)
            stored = await repos.agents.get(agent.id)
            if stored is not None:
                stored.desired_state = DesiredState.DELETED.value
                stored.observed_reason = f"deploy failed at {failure.step}"
            await repos.audit.record(
                actor_id=actor_id,
                action="deploy",
                agent_id=agent.id,
                outcome="failed",
                detail=f"{failure.step}: {failure.hint}",
            )

    # -- changes -----------------------------------------------------------------------

    async def change(
        self,
        *,
        owner_id: int,
        agent_id: str,
        system_prompt: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        llm_api_key: str | None = None,
        llm_base_url: str | None = None,
    ) -> Agent:
        """A new revision (prompt, model or key). Pods roll only for what they see (prompt,
        model); a new key or endpoint reaches the gateway without restarting the agent."""
        async with self.locks.hold(agent_id), self._operation("change", agent_id, owner_id):
            async with self._db.session() as session:
                agent = await self._revise(
                    Repositories(session), owner_id=owner_id, agent_id=agent_id,
                    system_prompt=system_prompt, provider=provider, model=model,
                    llm_api_key=llm_api_key, llm_base_url=llm_base_url,
                )  # fmt: skip
            await self._reapply(agent)  # the new desired state is stored first
            if not agent.profile_synced:
                await self._sync_profile(agent)
        return await self._reload(agent.id)

    async def _revise(
        self, repos: Repositories, *, owner_id: int, agent_id: str, system_prompt: str | None,
        provider: str | None, model: str | None, llm_api_key: str | None,
        llm_base_url: str | None,
    ) -> Agent:  # fmt: skip
        """The new revision written (not applied): the row and its history."""
        agent = await owned(repos, owner_id, agent_id)
        new_provider = provider or agent.provider
        new_model = model or agent.model
        same_provider = new_provider == agent.provider
        key = llm_api_key
        if key is None and same_provider and agent.llm_api_key_encrypted:
            key = self._vault.decrypt(agent.llm_api_key_encrypted)
        base_url = llm_base_url or (agent.llm_base_url if same_provider else None)
        checked = self._check_config(new_provider, new_model, key, base_url)
        if system_prompt is not None:
            agent.system_prompt = self._check_prompt(system_prompt)
            if agent.description is None:  # the description is the prompt's first sentence
                agent.profile_synced = False
        agent.provider, agent.model = new_provider, new_model
        agent.llm_api_key_encrypted = self._encrypt_optional(key)
        agent.llm_base_url = base_url if checked.is_custom else None
        agent.revision += 1
        await repos.revisions.record(agent, created_by=owner_id)
        await repos.audit.record(
            actor_id=owner_id, action="change", agent_id=agent.id, outcome="ok",
            detail=f"revision {agent.revision}",
        )  # fmt: skip
        return agent

    async def revert(self, *, owner_id: int, agent_id: str) -> Agent:
        """Restore the previous revision's prompt, model and key, as a new revision."""
        async with self.locks.hold(agent_id), self._operation("revert", agent_id, owner_id):
            agent = await self._restore_previous(owner_id, agent_id)
            await self._reapply(agent)
            if not agent.profile_synced:
                await self._sync_profile(agent)
        return await self._reload(agent.id)

    async def _restore_previous(self, owner_id: int, agent_id: str) -> Agent:
        async with self._db.session() as session:
            repos = Repositories(session)
            agent = await owned(repos, owner_id, agent_id)
            previous = await repos.revisions.get(agent.id, agent.revision - 1)
            if previous is None:
                raise NoPreviousRevision(agent.id)
            agent.provider, agent.model = previous.provider, previous.model
            if agent.description is None and agent.system_prompt != previous.system_prompt:
                agent.profile_synced = False
            agent.system_prompt = previous.system_prompt
            agent.llm_api_key_encrypted = previous.llm_api_key_encrypted
            agent.llm_base_url = previous.llm_base_url
            agent.revision += 1
            await repos.revisions.record(agent, created_by=owner_id)
            await repos.audit.record(
                actor_id=owner_id, action="revert", agent_id=agent.id, outcome="ok",
                detail=f"revision {previous.number} restored as {agent.revision}",
            )  # fmt: skip
        return agent

    async def rotate_token(self, *, owner_id: int, agent_id: str, new_token: str) -> Agent:
        """A new token for the same bot (Managed Bots' replaceManagedBotToken). Telegram has
        already revoked the old one, so the new one is stored, encrypted and durable,
        before anything that can fail; the rollout converges through reconcile if this
        apply fails. The gateway credential is replaced with it."""
        credential = new_credential()
        async with self.locks.hold(agent_id), self._operation("rotate", agent_id, owner_id):
            async with self._db.session() as session:
                repos = Repositories(session)
                agent = await owned(repos, owner_id, agent_id)
                agent.token_encrypted = self._vault.encrypt(new_token.strip())
                agent.gateway_key_encrypted = self._vault.encrypt(credential)
                agent.gateway_key_hash = credential_hash(credential)
                await repos.audit.record(
                    actor_id=owner_id, action="rotate-token", agent_id=agent.id, outcome="ok"
                )
            await self._reapply(agent)
        return await self._reload(agent.id)

    async def replace_token(self, *, owner_id: int, agent_id: str, new_token: str) -> Agent:
        """A pasted bot's new token from BotFather (the old one revoked or leaked).

        getMe must name the agent's own bot: another bot's token is refused before anything
        changes (TokenOfAnotherBot), a revoked or malformed one too (InvalidBotToken). Then,
        as in `rotate_token`, the token is stored encrypted with a new gateway credential,
        the webhook is cleared with the old token (if it still works: Telegram keeps one
        webhook per bot, so this must come before the new one is set) and the agent rolls
        and is pointed at with the new token. Managed Bots use `rotate_token`."""
        new_token = new_token.strip()
        async with self._db.reading() as session:  # refused before Telegram is asked
            agent = await owned(Repositories(session), owner_id, agent_id)
            managed, bot_id, username = agent.managed, agent.bot_id, agent.bot_username
        if managed:
            raise InvalidAgentConfig(ConfigProblem.MANAGED_TOKEN)
        identity = await self._identify(new_token)
        if identity.id != bot_id:
            raise TokenOfAnotherBot(expected=username, given=identity.username)
        credential = new_credential()
        async with self.locks.hold(agent_id), self._operation("replace-token", agent_id, owner_id):
            async with self._db.session() as session:
                repos = Repositories(session)
                agent = await owned(repos, owner_id, agent_id)
                old_token = self._vault.decrypt(agent.token_encrypted)
                agent.token_encrypted = self._vault.encrypt(new_token)
                agent.gateway_key_encrypted = self._vault.encrypt(credential)
                agent.gateway_key_hash = credential_hash(credential)
                agent.bot_username = identity.username or agent.bot_username
                # Judged anew: a revoked token is what a new one usually mends.
                agent.health = agent.health_kind = agent.health_reason = None
                await repos.audit.record(
                    actor_id=owner_id, action="replace-token", agent_id=agent.id, outcome="ok"
                )
            if old_token != new_token:
                with contextlib.suppress(AgentTokenError):  # revoked: nothing to clear
                    await self._telegram.delete_webhook(old_token)
            await self._reapply(agent)
        return await self._reload(agent.id)

    async def set_access(self, *, owner_id: int, agent_id: str, access: Access) -> Agent:
        """Who may talk to the agent. Stored on the agent, not in a revision, so edits,
        reverts and reconcile keep it; the runtime gets it as ALLOWED_USER_IDS (a rolling
        update). A Managed Bot also gets Telegram's own access settings, set first so the
        restriction holds at Telegram while the pods roll; if Telegram refuses now, the
        runtime still enforces it and reconcile sets Telegram's again."""
        async with self.locks.hold(agent_id), self._operation("access", agent_id, owner_id):
            async with self._db.session() as session:
                repos = Repositories(session)
                agent = await owned(repos, owner_id, agent_id)
                others = access.others_than(owner_id)
                if agent.managed and len(others) > MAX_MANAGED_LISTED_USERS:
                    raise InvalidAccess(
                        AccessProblem.TOO_MANY_FOR_MANAGED, limit=MAX_MANAGED_LISTED_USERS
                    )
                agent.access = access.mode.value
                agent.access_user_ids = access.stored_user_ids
                if agent.managed:  # Telegram's access settings are part of its profile
                    agent.profile_synced = False
                await repos.audit.record(
                    actor_id=owner_id, action="access", agent_id=agent.id, outcome="ok",
                    detail=f"{access.mode} ({len(others)} listed)",
                )  # fmt: skip
            if not agent.profile_synced:
                await self._sync_profile(agent)
            await self._reapply(agent)
        return await self._reload(agent.id)

    async def set_description(self, *, owner_id: int, agent_id: str, text: str | None) -> Agent:
        """The owner's one-liner for the bot's description and short description (None or
        blank: back to the prompt's first sentence). Nothing rolls: only Telegram shows
        it. The returned agent's `profile_synced` says whether Telegram has it already
        (after a 429 or an outage, reconcile sets it)."""
        description = check_description(text)
        async with self.locks.hold(agent_id):
            async with self._db.session() as session:
                repos = Repositories(session)
                agent = await owned(repos, owner_id, agent_id)
                agent.description = description
                agent.profile_synced = False
                await repos.audit.record(
                    actor_id=owner_id, action="describe", agent_id=agent.id, outcome="ok"
                )
            await self._sync_profile(agent)
        return await self._reload(agent.id)

    async def edit_and_apply(
        self, *, owner_id: int, agent_id: str, action: str,
        edit: Callable[[Repositories, Agent], Awaitable[str]],
    ) -> Agent:  # fmt: skip
        """A change another service stores (`edit`: in this transaction, given the owner's
        agent; returns the audit detail, never a secret), applied as the card's own edits
        are: under the agent's lock, as an operation, waiting for the rollout."""
        async with self.locks.hold(agent_id), self._operation(action, agent_id, owner_id):
            async with self._db.session() as session:
                repos = Repositories(session)
                agent = await owned(repos, owner_id, agent_id)
                detail = await edit(repos, agent)
                await repos.audit.record(
                    actor_id=owner_id, action=action, agent_id=agent.id, outcome="ok",
                    detail=detail,
                )  # fmt: skip
            await self._reapply(agent)
        return await self._reload(agent.id)

    async def sync_pending_profiles(self, *, limit: int = PROFILES_PER_RECONCILE) -> list[str]:
        """Reconcile's part for Telegram: agents whose commands, description or managed
        access Telegram may not have yet get them again; returns those now set."""
        async with self._db.reading() as session:
            pending = await Repositories(session).agents.profile_pending(limit)
        synced = []
        for agent_id in pending:
            async with self.locks.hold(agent_id):
                agent = await self.stored(agent_id)
                if agent is None or agent.desired_state == DesiredState.DELETED:
                    continue
                if not agent.profile_synced and await self._sync_profile(agent):
                    synced.append(agent_id)
        return synced

    async def _sync_profile(self, agent: Agent) -> bool:
        """Telegram shows the agent's commands and description (and a Managed Bot's access)
        as stored; True if it all went through. A failure (a 429, Telegram away, a revoked
        token) never fails the action that asked: it is logged with the agent's id and the
        row stays unsynced for reconcile. Called with the agent's lock held."""
        if not await self._push_profile(agent):
            return False
        async with self._db.session() as session:
            await Repositories(session).agents.write(agent.id, profile_synced=True)
        agent.profile_synced = True
        return True

    async def _push_profile(self, agent: Agent) -> bool:
        """_sync_profile's calls to Telegram, without storing that they went through."""
        profile = profile_of(agent)
        token = self._vault.decrypt(agent.token_encrypted)
        try:
            await self._telegram.set_commands(token, profile.commands)
            await self._telegram.set_descriptions(
                token, description=profile.description, short=profile.short_description
            )
            if agent.managed:
                await self._set_managed_access(agent)
        except AgentTokenError as error:
            log.warning(
                "agent %s: its Telegram profile is not set yet (%s); reconcile retries",
                agent.id, error,
            )  # fmt: skip
            return False
        return True

    async def _set_managed_access(self, agent: Agent) -> None:
        """Telegram's own access settings of a Managed Bot (the manager's token)."""
        if not self._telegram.manages_bots:
            log.warning(
                "agent %s: Telegram's access settings not set (no manager token here); "
                "its runtime enforces them alone", agent.id,
            )  # fmt: skip
            return
        access = access_of(agent)
        await self._telegram.set_managed_access(
            agent.bot_id,
            restricted=access.mode is not AccessMode.EVERYONE,
            user_ids=access.others_than(agent.owner_id),
        )

    async def restart(self, *, owner_id: int, agent_id: str) -> Agent:
        async with self.locks.hold(agent_id), self._operation("restart", agent_id, owner_id):
            agent = await self._act(owner_id, agent_id, "restart")
            # Applied first (a no-op when nothing changed): a backend that lost the agent's
            # secrets (a local one after a manager restart) can then start it again.
            await self._backend_call(self._backend.apply(self.spec_for(agent)))
            await self._backend_call(self._backend.restart(agent.id))
        return agent

    async def stop(self, *, owner_id: int, agent_id: str) -> Agent:
        """Stored as stopped first: a scale-down that fails is finished by reconcile."""
        async with self.locks.hold(agent_id), self._operation("stop", agent_id, owner_id):
            agent = await self._act(owner_id, agent_id, "stop", desired=DesiredState.STOPPED)
            await self._backend_call(self._backend.stop(agent.id))
        return await self._reload(agent.id)

    async def resume(self, *, owner_id: int, agent_id: str) -> Agent:
        async with self.locks.hold(agent_id), self._operation("resume", agent_id, owner_id):
            agent = await self._act(
                owner_id, agent_id, "resume", desired=DesiredState.RUNNING, fresh_health=True
            )
            await self._reapply(agent)
        return await self._reload(agent.id)

    async def stop_all_of(self, owner_id: int, *, actor_id: int) -> int:
        """Stop every running agent of a user (a ban); returns how many were stopped."""
        async with self._db.session() as session:
            repos = Repositories(session)
            running = [
                agent
                for agent in await repos.agents.owned_by(owner_id)
                if agent.desired_state == DesiredState.RUNNING
            ]
            for agent in running:
                agent.desired_state = DesiredState.STOPPED.value
                await repos.audit.record(
                    actor_id=actor_id, action="stop", agent_id=agent.id, outcome="ok",
                    detail="owner banned",
                )  # fmt: skip
        for agent in running:
            try:
                async with self.locks.hold(agent.id):
                    await self._backend.stop(agent.id)
            except BackendError as error:  # stored as stopped: reconcile scales it down
                log.warning("could not stop agent %s of a banned user: %s", agent.id, error)
        return len(running)

    async def ensure_gateway_credentials(self) -> int:
        """Agents made before the gateway get a credential and are re-applied at once, so
        their pods and processes lose the provider key they used to hold."""
        async with self._db.session() as session:
            agents = list(await Repositories(session).agents.without_gateway_key())
            for agent in agents:
                credential = new_credential()
                agent.gateway_key_encrypted = self._vault.encrypt(credential)
                agent.gateway_key_hash = credential_hash(credential)
        for agent in agents:
            try:
                await self._backend.apply(self.spec_for(agent))
            except BackendError as error:
                log.warning("agent %s keeps its old workload for now: %s", agent.id, error)
        return len(agents)

    # -- for the reconciler (services/reconciler.py) ------------------------------------

    async def stored(self, agent_id: str) -> Agent | None:
        """The agent's row as stored now (read under its lock by the caller)."""
        async with self._db.session() as session:
            return await Repositories(session).agents.get(agent_id)

    async def mark_stopped(self, agent_id: str) -> bool:
        """Desired state `stopped` if it is `running`; False if it was not running."""
        async with self._db.session() as session:
            agent = await Repositories(session).agents.get(agent_id)
            if agent is None or agent.desired_state != DesiredState.RUNNING:
                return False
            agent.desired_state = DesiredState.STOPPED.value
        return True

    async def audit_system(self, action: str, agent_id: str | None, detail: str) -> None:
        """An audit entry whose actor is the system itself."""
        await self._audit(None, action, agent_id, "ok", detail)

    async def mute(self, *, owner_id: int, agent_id: str, hours: int = 24) -> Agent:
        async with self._db.session() as session:
            repos = Repositories(session)
            agent = await owned(repos, owner_id, agent_id)
            agent.muted_until = utcnow() + timedelta(hours=hours)
            await repos.audit.record(
                actor_id=owner_id, action="mute", agent_id=agent.id, outcome="ok"
            )
        return agent

    async def delete(self, *, owner_id: int, agent_id: str) -> None:
        async with self.locks.hold(agent_id), self._operation("delete", agent_id, owner_id):
            agent = await self._act(owner_id, agent_id, "delete", desired=DesiredState.DELETED)
            async with self._db.session() as session:  # its conversations go with it
                await Repositories(session).conversations.forget(agent.id)
            await self._clear_webhook(agent)
            try:
                await self._backend.delete(agent.id)
            except BackendError as error:
                # The database already says deleted: reconcile removes what is left.
                log.warning("deleting agent %s left objects for reconcile: %s", agent.id, error)

    async def _clear_webhook(self, agent: Agent) -> None:
        """A deleted agent's bot must not keep pointing at us (its owner may poll it
        elsewhere next): a 429 or 5xx is retried a few times before it is given up."""
        token = self._vault.decrypt(agent.token_encrypted)
        for delay in (*WEBHOOK_CLEAR_RETRIES, None):
            try:
                await self._telegram.delete_webhook(token)
                return
            except AgentTokenError as error:
                if error.reason != AgentTokenError.UNREACHABLE or delay is None:
                    log.info("could not clear the webhook of agent %s: %s", agent.id, error)
                    return
            await asyncio.sleep(delay)

    # -- helpers ------------------------------------------------------------------------

    def spec_for(self, agent: Agent) -> AgentSpec:
        """What the agent's pod or process gets: its own secrets and the gateway's URL,
        never a provider key (the gateway finds the right key itself)."""
        gateway_key = (
            SecretStr(self._vault.decrypt(agent.gateway_key_encrypted))
            if agent.gateway_key_encrypted
            else None
        )
        return AgentSpec(
            agent_id=agent.id,
            secrets=AgentSecrets(
                bot_token=SecretStr(self._vault.decrypt(agent.token_encrypted)),
                webhook_secret=SecretStr(self._vault.decrypt(agent.webhook_secret_encrypted)),
                gateway_key=gateway_key,
            ),
            llm_model=agent.model,
            llm_vision=sees_images(self._providers, agent.provider, agent.model),
            system_prompt=agent.system_prompt,
            llm_base_url=self._config.gateway_url,
            telegram_api_url=self._config.telegram_api_url,
            installation=self._config.installation_id,
            memory_idle_days=self._config.memory_idle_days,
            allowed_user_ids=access_of(agent).allowed_user_ids(agent.owner_id),
            mcp_servers=tuple(name for name in (agent.mcp_servers or "").split(",") if name),
            running=agent.desired_state == DesiredState.RUNNING,
            revision=agent.revision,
        )

    async def _reapply(self, agent: Agent) -> None:
        """Apply the stored desired state and wait for its rollout; the webhook is pointed
        whatever the apply did (it does not depend on the workload: a rotated token must
        be heard at once)."""
        spec = self.spec_for(agent)
        failed: BackendError | None = None
        try:
            await self._backend.apply(spec)
        except BackendError as error:
            failed = error  # the new desired state is stored: reconcile retries the rollout
        if spec.running:
            await self.point_webhook(spec, drop_pending_updates=False)
        if failed is not None:
            raise DeployFailed(
                DeployStep.WORKLOAD, str(failed), rolled_back=False,
                code=cluster_code(failed.status),
            ) from None  # fmt: skip
        if spec.running:
            # Done means the new configuration answers (or is still starting), and a
            # configuration that crashes is said now, not by the next health sweep.
            await self._store_observed(await self._wait_until_ready(agent.id))

    async def point_webhook(self, spec: AgentSpec, *, drop_pending_updates: bool) -> None:
        """Webhook mode: set and verify it. Polling mode: delete it so the runtime may poll."""
        token = spec.secrets.bot_token.get_secret_value()
        try:
            if self._config.mode == "polling":
                await self._telegram.delete_webhook(
                    token, drop_pending_updates=drop_pending_updates
                )
                return
            url = self.webhook_url(spec.agent_id)
            await self._telegram.set_webhook(
                token,
                url=url,
                secret=spec.secrets.webhook_secret.get_secret_value(),
                drop_pending_updates=drop_pending_updates,
            )
            status = await self._telegram.webhook_status(token)
        except AgentTokenError as error:
            raise DeployFailed(
                DeployStep.WEBHOOK, error.reason, code=_telegram_code(error)
            ) from None
        if status.url != url:
            raise DeployFailed(
                DeployStep.WEBHOOK, "Telegram did not keep the webhook URL",
                code=ErrorCode.TELEGRAM_REJECTED,
            )  # fmt: skip

    async def _wait_until_ready(self, agent_id: str) -> Observed:
        """Poll the backend until the agent runs; a crash loop fails, slowness does not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.ready_timeout
        observed = Observed(agent_id=agent_id, state=ObservedState.STARTING)
        while loop.time() < deadline:
            try:
                observed = await self._backend.observe(agent_id) or observed
            except BackendError as error:
                log.warning("observing agent %s failed: %s", agent_id, error)
            if observed.state is ObservedState.RUNNING:
                return observed
            if observed.state is ObservedState.CRASH_LOOPING:
                raise DeployFailed(
                    DeployStep.READY, observed.reason or "crash-looping",
                    code=ErrorCode.AGENT_CRASHED,
                )  # fmt: skip
            await asyncio.sleep(self._config.ready_poll_interval)
        # Still starting (an image pull, a slow node): not a failure; health reports it later.
        return observed

    async def _store_observed(self, observed: Observed) -> None:
        async with self._db.session() as session:
            await self._write_observed(Repositories(session), observed)

    @staticmethod
    async def _write_observed(repos: Repositories, observed: Observed) -> None:
        await repos.agents.write(
            observed.agent_id,
            observed_state=observed.state.value,
            observed_reason=observed.reason,
            observed_at=utcnow(),
        )

    async def _identify(self, token: str) -> BotIdentity:
        try:
            return await self._telegram.identify(token.strip())
        except AgentTokenError as error:
            raise InvalidBotToken(TokenProblem(error.reason)) from None

    def _check_config(
        self, provider_name: str, model: str, key: str | None, base_url: str | None = None
    ) -> Provider:
        """Any model id a provider may serve ("Other model..."), not only the catalogue's."""
        provider = find_provider(self._providers, provider_name)
        if provider is None:
            raise InvalidAgentConfig(ConfigProblem.UNKNOWN_PROVIDER, provider=provider_name[:40])
        if model not in provider.models and not is_model_id(model):
            raise InvalidAgentConfig(ConfigProblem.NOT_A_MODEL, model=model[:40])
        if provider.needs_user_key and not key:
            raise InvalidAgentConfig(ConfigProblem.KEY_NEEDED, provider=provider.label)
        if provider.is_custom and not base_url:
            raise InvalidAgentConfig(ConfigProblem.ENDPOINT_NEEDED)
        return provider

    @staticmethod
    def _check_prompt(prompt: str) -> str:
        prompt = prompt.strip()
        if not prompt:
            raise InvalidAgentConfig(ConfigProblem.PROMPT_EMPTY)
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidAgentConfig(ConfigProblem.PROMPT_TOO_LONG, limit=MAX_PROMPT_CHARS)
        return prompt

    def _encrypt_optional(self, value: str | None) -> str | None:
        return self._vault.encrypt(value) if value else None

    async def _act(
        self, owner_id: int, agent_id: str, action: str, *, desired: DesiredState | None = None,
        fresh_health: bool = False,
    ) -> Agent:  # fmt: skip
        async with self._db.session() as session:
            repos = Repositories(session)
            agent = await owned(repos, owner_id, agent_id)
            if desired is not None:
                agent.desired_state = desired.value
            if fresh_health:  # a resumed agent is judged anew, not as it was when stopped
                agent.health = agent.health_kind = agent.health_reason = None
            await repos.audit.record(
                actor_id=owner_id, action=action, agent_id=agent.id, outcome="ok"
            )
        return agent

    async def _backend_call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except BackendError as error:
            raise DeployFailed(
                DeployStep.WORKLOAD, str(error), rolled_back=False,
                code=cluster_code(error.status),
            ) from None  # fmt: skip

    async def _audit(
        self,
        actor_id: int | None,
        action: str,
        agent_id: str | None,
        outcome: str,
        detail: str | None = None,
    ) -> None:
        async with self._db.session() as session:
            await Repositories(session).audit.record(
                actor_id=actor_id, action=action, agent_id=agent_id, outcome=outcome, detail=detail
            )

    async def _reload(self, agent_id: str) -> Agent:
        async with self._db.session() as session:
            agent = await Repositories(session).agents.get(agent_id)
            assert agent is not None
            return agent


def _telegram_code(error: AgentTokenError) -> ErrorCode:
    return {
        AgentTokenError.INVALID: ErrorCode.TOKEN_REVOKED,
        AgentTokenError.UNREACHABLE: ErrorCode.TELEGRAM_UNAVAILABLE,
    }.get(error.reason, ErrorCode.TELEGRAM_REJECTED)
