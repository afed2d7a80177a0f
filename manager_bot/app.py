"""Wiring: settings, database, vault, backend, services, Dispatcher; nothing else builds them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramBadRequest
from aiogram.fsm.storage.base import BaseStorage
from aiogram.types import BotCommand, BotCommandScopeChat

from manager_bot import texts
from manager_bot.backends.base import Backend
from manager_bot.backends.local import LocalBackend
from manager_bot.config import ManagerSettings
from manager_bot.crypto import Vault, load_vault
from manager_bot.db.fsm_storage import SqlStorage, build_fsm_storage
from manager_bot.db.migrate import upgrade
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.event_loop import running_loop_name
from manager_bot.flood_control import FloodControlRetry
from manager_bot.gateway.endpoints import EndpointGuard, EndpointPolicy
from manager_bot.handlers import admin, agent_tools, agents, common, deploy, language, start
from manager_bot.i18n import (
    DEFAULT_LANGUAGE,
    LANGUAGES,
    Catalogues,
    LanguageMiddleware,
    Languages,
)
from manager_bot.inline_filters import run_sync_filters_inline
from manager_bot.leader import leader_elected
from manager_bot.leader_jobs import agent_locks_for, elect_and_lead
from manager_bot.logs import configure_logging
from manager_bot.metrics import TelegramErrorMetrics, UpdateMetricsMiddleware
from manager_bot.middlewares import (
    BanMiddleware,
    FsmWriteBatch,
    PerUserOrderMiddleware,
    ThrottleMiddleware,
    UserMiddleware,
    on_error,
)
from manager_bot.response_models import KeepResponseModels
from manager_bot.scheduler import Scheduler
from manager_bot.services.admin import AdminConsole, BanList
from manager_bot.services.agent_locks import AgentLocks
from manager_bot.services.agent_memory import AgentMemory
from manager_bot.services.agent_tools import AgentTools
from manager_bot.services.broadcast import Broadcaster
from manager_bot.services.budgets import Budgets
from manager_bot.services.deployer import Deployer, DeployerConfig
from manager_bot.services.health import HealthConfig, HealthMonitor
from manager_bot.services.notices import NoticeSender
from manager_bot.services.notifications import Notifier
from manager_bot.services.providers import available_providers
from manager_bot.services.reconciler import Reconciler
from manager_bot.services.recovery import Recovery
from manager_bot.services.telegram import AgentTelegram
from manager_bot.status_server import Startup, StartupStopped, StatusServer, StepPostponed
from manager_bot.telegram_session import JsonSession
from runtime.tasks import cancel_all

if TYPE_CHECKING:
    from manager_bot.gateway.server import Gateway

log = logging.getLogger(__name__)
DATA_DIR = Path("data")
T = TypeVar("T")


def build_bot(settings: ManagerSettings) -> Bot:
    """A Bot that talks to `TELEGRAM_API_URL` (the real Bot API or a fake one)."""
    session = JsonSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
    session.middleware(FloodControlRetry())  # outermost: the metrics count each 429
    session.middleware(TelegramErrorMetrics())
    session.middleware(KeepResponseModels())
    return Bot(
        settings.manager_bot_token.get_secret_value(),
        session=session,
        default=DefaultBotProperties(parse_mode="HTML"),
    )


def bot_commands(*, admin: bool = False) -> list[BotCommand]:
    """The command menu in the current language (texts.COMMANDS, and the admins' too)."""
    menu = texts.COMMANDS | (texts.ADMIN_COMMANDS if admin else {})
    return [BotCommand(command=name, description=words) for name, words in menu.items()]


async def register_commands(bot: Bot, admin_ids: list[int], *, languages: Languages) -> None:
    """Everyone's commands by default, and in Russian for Russian apps; admins get theirs
    too, in their own chat's scope, in the language they read."""
    for spoken in LANGUAGES:
        with languages.speaking(spoken):
            code = None if spoken == DEFAULT_LANGUAGE else spoken
            await bot.set_my_commands(bot_commands(), language_code=code)
    for admin_id in admin_ids:
        with languages.speaking(await languages.of(admin_id)):
            commands = bot_commands(admin=True)
        try:
            await bot.set_my_commands(commands, scope=BotCommandScopeChat(chat_id=admin_id))
        except TelegramBadRequest as error:  # the admin has not opened the bot yet
            log.warning("admin commands not registered for %s: %s", admin_id, error.message)


def build_deployer(
    *,
    settings: ManagerSettings,
    database: Database,
    vault: Vault,
    backend: Backend,
    telegram: AgentTelegram,
    gateway_url: str,
    installation_id: str = "",
    ready_timeout: float = 90.0,
    ready_poll_interval: float = 0.5,
    locks: AgentLocks | None = None,
) -> Deployer:
    return Deployer(
        locks=locks,
        database=database,
        vault=vault,
        backend=backend,
        telegram=telegram,
        providers=available_providers(settings),
        config=DeployerConfig(
            # The manager sets webhooks for pods; local agents poll.
            mode="webhook" if settings.backend == "kubernetes" else "polling",
            public_url=settings.public_url,
            telegram_api_url=settings.telegram_api_url,
            max_agents_per_user=settings.max_agents_per_user,
            gateway_url=gateway_url,
            installation_id=installation_id,
            memory_idle_days=settings.memory_idle_days,
            ready_timeout=ready_timeout,
            ready_poll_interval=ready_poll_interval,
        ),
    )


def build_scheduler(
    *,
    settings: ManagerSettings,
    database: Database,
    backend: Backend,
    deployer: Deployer,
    bot: Bot,
    languages: Languages | None = None,
    health: HealthConfig | None = None,
    memory: AgentMemory | None = None,
) -> Scheduler:
    """Health sweep, notifications and reconcile, as the manager runs them."""
    config = health or HealthConfig(
        webhook_mode=settings.backend == "kubernetes",
        expected_webhook=f"{settings.public_url or ''}/webhook/",
    )
    admins = list(settings.admin_ids)
    # One sender for the sweep's alerts and the notices job: one of them honouring a 429
    # holds the other too, and no notice is sent by both at once.
    notices = NoticeSender(bot=bot, database=database, admin_ids=admins, languages=languages)
    notifier = Notifier(bot=bot, database=database, admin_ids=admins, notices=notices)
    return Scheduler(
        monitor=HealthMonitor(database=database, backend=backend, deployer=deployer, config=config),
        notifier=notifier,
        notices=notices,
        reconciler=Reconciler(
            database=database, backend=backend, deployer=deployer, alert=notifier.tell_admins
        ),
        health_interval=settings.health_interval,
        memory=memory,
    )


def build_dispatcher(
    *,
    settings: ManagerSettings,
    database: Database,
    vault: Vault,
    deployer: Deployer,
    storage: BaseStorage,
    broadcaster: Broadcaster,
    bans: BanList,
    languages: Languages,
    agent_memory: AgentMemory | None = None,
) -> Dispatcher:
    """The Dispatcher with every feature Router and the services handlers ask for."""
    budgets = Budgets(database=database, default_budget=settings.agent_daily_token_budget)
    dispatcher = Dispatcher(
        storage=storage,
        settings=settings,
        deployer=deployer,
        vault=vault,
        providers=available_providers(settings),
        broadcaster=broadcaster,
        budgets=budgets,
        endpoint_guard=EndpointGuard(
            EndpointPolicy.from_settings(
                settings.gateway_allowed_endpoints, settings.k8s_cluster_cidrs
            )
        ),
        admin=AdminConsole(database=database, deployer=deployer, bans=bans, budgets=budgets),
        # The card's MCP servers: their URLs are refused as users' LLM endpoints are.
        agent_tools=AgentTools(
            database=database,
            vault=vault,
            deployer=deployer,
            guard=EndpointGuard(
                EndpointPolicy.from_settings(
                    settings.gateway_allowed_endpoints, settings.k8s_cluster_cidrs
                )
            ),
        ),
        languages=languages,
        agent_memory=agent_memory,
    )
    dispatcher.update.outer_middleware(UpdateMetricsMiddleware())
    # One instance of each for messages and button presses alike: a user's order, rate
    # and record are one thing whichever kind of update they send.
    per_user = [
        LanguageMiddleware(languages),  # first: even "slow down" is in the user's language
        ThrottleMiddleware(),
        BanMiddleware(bans),
        PerUserOrderMiddleware(),
        UserMiddleware(database),
    ]
    if isinstance(storage, SqlStorage):
        per_user.append(FsmWriteBatch(storage))
    for observer in (dispatcher.message, dispatcher.callback_query):
        for middleware in per_user:
            observer.outer_middleware(middleware)
    dispatcher.errors.register(on_error)
    dispatcher.include_routers(
        common.build_cancel_router(),
        deploy.build_exit_router(),
        # Before the admin and start routers: any command leaves a pending card edit.
        agents.build_edit_router(),
        agent_tools.build_router(),  # the card's MCP servers; its pending add, as above
        admin.build_router(list(settings.admin_ids)),
        start.build_router(),
        language.build_router(),
        deploy.build_router(),
        agents.build_card_router(),
        common.build_fallback_router(),
    )
    run_sync_filters_inline(dispatcher)  # not one thread trip per filter (see there)
    return dispatcher


async def installation_id(database: Database) -> str:
    """This installation's id, made on the first start of a new database."""
    async with database.session() as session:
        return await Repositories(session).installation.get_or_create()


def build_backend(settings: ManagerSettings) -> Backend:
    if settings.backend == "kubernetes":
        # Imported only here: the Kubernetes client adds a quarter second to start-up.
        from manager_bot.backends.kubernetes import KubernetesBackend

        return KubernetesBackend.from_settings(settings)
    return LocalBackend(data_dir=DATA_DIR)


async def open_database(url: str) -> Database:
    """The database, reachable and migrated to the newest schema."""
    database = Database(url)
    try:
        # Asked first because it can be cancelled; Alembic's thread cannot.
        async with database.engine.connect():
            pass
        await upgrade(url)
    except BaseException:
        await database.close()
        raise
    return database


@dataclass(frozen=True)
class ManagerParts:
    """A manager's parts, connected: what `python -m manager_bot` runs, and tests poke at."""

    settings: ManagerSettings
    database: Database
    vault: Vault
    backend: Backend
    gateway: Gateway | None  # in this process with the local backend; its own on Kubernetes
    gateway_url: str  # the LLM base URL agents are given
    agent_telegram: AgentTelegram
    deployer: Deployer
    reconciler: Reconciler
    bot: Bot
    broadcaster: Broadcaster
    bans: BanList
    dispatcher: Dispatcher
    scheduler: Scheduler  # not started
    recovery: Recovery
    languages: Languages
    memory: AgentMemory


async def assemble_manager(
    settings: ManagerSettings,
    *,
    cleanup: contextlib.AsyncExitStack,
    startup: Startup | None = None,
    vault: Vault | None = None,
    backend: Backend | None = None,
    health: HealthConfig | None = None,
    ready_timeout: float = 90.0,
    ready_poll_interval: float = 0.5,
) -> ManagerParts:
    """Every part of a manager, built from `settings` and connected; nothing polls yet.

    The one place that decides how the parts connect: `run_manager` and the tests both
    call it. Each step that needs the database runs through `startup` when given
    (retried while its trouble is transient), else once. What it opens is closed by
    `cleanup`, in the order that lets sends in flight finish; a `backend` or `vault`
    passed in is the caller's (tests keep one across restarts, or share one).
    With the local backend the LLM gateway runs in this process, on
    GATEWAY_HOST:GATEWAY_PORT; on Kubernetes it is a process of its own
    (`python -m manager_bot gateway`) that agents reach at `agents_gateway_url`.
    """

    async def step(name: str, action: Callable[[], Awaitable[T]]) -> T:
        return await (action() if startup is None else startup.run(name, action))

    if vault is None:
        vault = load_vault(settings, data_dir=DATA_DIR)  # a missing key: fatal, at once
    database_url = settings.database_url.get_secret_value()
    database = await step("database", lambda: open_database(database_url))
    cleanup.push_async_callback(database.close)
    if backend is None:
        backend = build_backend(settings)
        cleanup.push_async_callback(backend.close)
    gateway, gateway_url = None, settings.agents_gateway_url
    if isinstance(backend, LocalBackend):
        # One machine: the gateway runs here, on 127.0.0.1, before any agent starts.
        from manager_bot.gateway.process import build_gateway  # only when served here

        gateway = build_gateway(settings=settings, database=database, vault=vault)
        cleanup.push_async_callback(gateway.stop)
        try:
            gateway_url = await gateway.start(settings.gateway_host, settings.gateway_port)
        except OSError as error:
            raise SystemExit(
                f"python -m manager_bot: the LLM gateway cannot listen on "
                f"{settings.gateway_host}:{settings.gateway_port} ({error.strerror}); "
                "set GATEWAY_PORT to a free port"
            ) from None
        await backend.adopt()
    # The manager's own token too: Managed Bots' access settings are set with it.
    agent_telegram = AgentTelegram(
        api_url=settings.telegram_api_url, manager_token=settings.manager_bot_token
    )
    cleanup.push_async_callback(agent_telegram.close)
    locks = agent_locks_for(settings)  # across replicas when several run (leader_jobs.py)
    cleanup.push_async_callback(locks.close)
    deployer = build_deployer(
        settings=settings, database=database, vault=vault, backend=backend,
        telegram=agent_telegram, gateway_url=gateway_url,
        installation_id=await step("database", lambda: installation_id(database)),
        ready_timeout=ready_timeout, ready_poll_interval=ready_poll_interval, locks=locks,
    )  # fmt: skip
    reconciler = Reconciler(database=database, backend=backend, deployer=deployer)
    memory = AgentMemory(
        database=database, vault=vault, backend=backend, deployer=deployer,
        idle_days=settings.memory_idle_days,
    )  # fmt: skip
    bot = build_bot(settings)
    # The catalogues are read and compiled once, off the event loop.
    languages = Languages(database=database, i18n=await asyncio.to_thread(Catalogues))
    broadcaster = Broadcaster(
        bot=bot, database=database, rate=settings.broadcast_rate, languages=languages,
        sends=not leader_elected(settings),  # several replicas: the leader sends
    )  # fmt: skip
    bans = BanList()
    await step("database", lambda: bans.load(database))
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    dispatcher = build_dispatcher(
        settings=settings,
        database=database,
        vault=vault,
        deployer=deployer,
        storage=build_fsm_storage(database=database, redis_url=redis_url),
        broadcaster=broadcaster,
        bans=bans,
        languages=languages,
        agent_memory=memory,
    )
    cleanup.push_async_callback(dispatcher.storage.close)
    scheduler = build_scheduler(
        settings=settings, database=database, backend=backend, deployer=deployer, bot=bot,
        languages=languages, health=health, memory=memory,
    )  # fmt: skip
    recovery = Recovery(
        database=database, deployer=deployer, reconciler=reconciler, bot=bot, languages=languages
    )
    await cleanup.enter_async_context(bot)
    # Stopped before the bot's session closes: sends in flight may finish.
    cleanup.push_async_callback(scheduler.stop)
    cleanup.push_async_callback(broadcaster.close)
    return ManagerParts(
        settings=settings, database=database, vault=vault, backend=backend, gateway=gateway,
        gateway_url=gateway_url, agent_telegram=agent_telegram, deployer=deployer,
        reconciler=reconciler, bot=bot, broadcaster=broadcaster, bans=bans,
        dispatcher=dispatcher, scheduler=scheduler, recovery=recovery, languages=languages,
        memory=memory,
    )  # fmt: skip


RECONCILE_PATIENCE = 10.0  # seconds start-up waits for the cluster before polling anyway


async def receive_updates(parts: ManagerParts, startup: Startup) -> None:
    """Serve the webhook (MANAGER_WEBHOOK=true), else poll; until SIGINT or SIGTERM."""
    if parts.settings.manager_webhook:
        from manager_bot.intake.serve import serve_webhook  # webhook mode only

        await serve_webhook(parts, startup)
        return
    # A webhook left by webhook mode would refuse getUpdates (409): polling removes it.
    await startup.run("Telegram deleteWebhook", parts.bot.delete_webhook)
    # From here aiogram handles SIGINT and SIGTERM (it replaces our handlers).
    await parts.dispatcher.start_polling(parts.bot, handle_signals=True)


async def run_manager(settings: ManagerSettings) -> None:
    """Serve the probes, start up step by step, then poll Telegram.

    Each step that needs the database, the cluster or Telegram is retried with backoff
    while its trouble is transient (`Startup`), /readyz answering 503 meanwhile: a
    database not up yet or a Bot API answering 502 delays the start; it does not crash
    the process into a restart loop. A cluster still unreachable after
    RECONCILE_PATIENCE does not hold polling back: users are served (their actions
    report cluster errors themselves) and the reconcile keeps retrying beside polling.
    SIGINT and SIGTERM stop a start-up that is waiting at once.
    """
    configure_logging(settings.log_format, settings.secret_values(), level=settings.log_level)
    log.info("manager starting on the %s event loop", running_loop_name())
    status = StatusServer()
    startup = Startup(status=status)
    startup.handle_signals()
    background: list[asyncio.Task[object]] = []

    async def stop_background() -> None:
        await cancel_all(background)

    async with contextlib.AsyncExitStack() as cleanup:
        if settings.metrics_port:  # first: kubelet sees a live process, not yet ready
            await status.start(settings.metrics_host, settings.metrics_port)
            cleanup.push_async_callback(status.stop)
        try:
            parts = await assemble_manager(settings, cleanup=cleanup, startup=startup)
            # Cancelled before the parts close: the reconcile and recovery use them.
            cleanup.push_async_callback(stop_background)
            status.agent_counts = parts.deployer.queries.agent_counts
            upgraded = await startup.run("database", parts.deployer.ensure_gateway_credentials)
            if upgraded:
                log.info(
                    "%d agents moved to the LLM gateway (their provider keys removed)", upgraded
                )

            async def reconcile(patience: float | None = None) -> None:
                report = await startup.run(
                    "reconcile", parts.reconciler.reconcile, patience=patience
                )
                log.info(
                    "reconciled: %d applied, %d removed", len(report.applied), len(report.removed)
                )

            elected = leader_elected(settings)  # several replicas: jobs on the Lease's holder
            try:
                if not elected:  # the leader reconciles when it takes over
                    await reconcile(RECONCILE_PATIENCE)
            except StepPostponed:
                log.warning(
                    "the cluster does not answer: polling starts; reconcile retries beside it"
                )
                background.append(asyncio.create_task(reconcile()))

            async def on_startup() -> None:
                if elected:
                    # Cancelled at the stop (stop_background): jobs end, the Lease is handed back.
                    background.append(asyncio.create_task(elect_and_lead(parts)))
                else:
                    parts.scheduler.start()
                    # What a manager that died midway left unfinished: finished (or rolled
                    # back) and its users told, beside polling (a deploy may wait a minute).
                    background.append(asyncio.create_task(parts.recovery.finish_unfinished()))
                # Start-up leaves a great many long-lived objects (aiogram's and pydantic's
                # models, SQLAlchemy's mappers). Frozen, a full collection no longer walks them
                # all: under load it had stalled every chat at once for about 0.2 s.
                gc.collect()
                gc.freeze()
                # A young collection every 20,000 allocations, not 700: under a burst the
                # collector was ~5% of the CPU, mostly walking objects about to die anyway
                # (bench/manager.py: about 6% less CPU per update, p50 a fifth lower).
                gc.set_threshold(20_000, 20, 20)
                status.ready = True

            parts.dispatcher.startup.register(on_startup)
            # Polling asks getMe first and stops at a 5xx: asked here (aiogram caches it).
            await startup.run("Telegram getMe", parts.bot.me)
            await startup.run(
                "Telegram setMyCommands",
                lambda: register_commands(
                    parts.bot, list(settings.admin_ids), languages=parts.languages
                ),
            )
            resumed = (
                []
                if elected
                else await startup.run("database", parts.broadcaster.resume_unfinished)
            )
            if resumed:
                log.info("resuming broadcasts %s", resumed)
            if startup.stopping:
                raise StartupStopped
            await receive_updates(parts, startup)
        except StartupStopped:
            log.info("stopped before start-up was done")
