"""Building the gateway from settings, and `python -m manager_bot gateway` on its own."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from pathlib import Path

from manager_bot.config import PlatformSettings
from manager_bot.crypto import Vault, load_vault
from manager_bot.db.session import Database
from manager_bot.gateway.accounts import AccountBook
from manager_bot.gateway.endpoints import EndpointGuard, EndpointPolicy
from manager_bot.gateway.ledger import UsageLedger
from manager_bot.gateway.limits import UserRateLimiter
from manager_bot.gateway.mcp_proxy import McpProxy, McpServerBook
from manager_bot.gateway.memory import ConversationStore, MemoryApi
from manager_bot.gateway.server import Gateway, GatewayLimits
from manager_bot.gateway.transcription import transcriber_for
from manager_bot.services.providers import available_providers

log = logging.getLogger(__name__)


def build_gateway(*, settings: PlatformSettings, database: Database, vault: Vault) -> Gateway:
    providers = available_providers(settings)
    accounts = AccountBook(
        database=database,
        vault=vault,
        providers=providers,
        default_budget=settings.agent_daily_token_budget,
        cache_seconds=settings.gateway_cache_seconds,
    )
    # Users' own LLM endpoints and their agents' MCP servers: one policy for both.
    guard = EndpointGuard(
        EndpointPolicy.from_settings(settings.gateway_allowed_endpoints, settings.k8s_cluster_cidrs)
    )
    return Gateway(
        accounts=accounts,
        ledger=UsageLedger(database=database, flush_seconds=settings.gateway_flush_seconds),
        limiter=UserRateLimiter(
            per_minute=settings.gateway_user_rate_per_minute, burst=settings.gateway_user_burst
        ),
        guard=guard,
        limits=GatewayLimits(
            max_tokens=settings.gateway_max_tokens,
            agent_concurrency=settings.gateway_agent_concurrency,
            audio_tokens_per_second=settings.transcription_tokens_per_second,
        ),
        transcriber=transcriber_for(providers, settings.transcription_model),
        memory=MemoryApi(accounts=accounts, store=ConversationStore(database, vault)),
        ready=database.ping,
        mcp=McpProxy(
            servers=McpServerBook(
                database=database, vault=vault, cache_seconds=settings.gateway_cache_seconds
            ),
            guard=guard,
        ),
    )


async def run_gateway(
    settings: PlatformSettings, *, stop: asyncio.Event | None = None, data_dir: Path = Path("data")
) -> None:
    """Serve until SIGTERM/SIGINT; counted usage is written before exit."""
    from manager_bot.event_loop import running_loop_name
    from manager_bot.logs import configure_logging

    configure_logging(settings.log_format, settings.secret_values(), level=settings.log_level)
    log.info("gateway starting on the %s event loop", running_loop_name())
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    database = Database(settings.database_url.get_secret_value())
    gateway = build_gateway(
        settings=settings, database=database, vault=load_vault(settings, data_dir=data_dir)
    )
    url = await gateway.start(settings.gateway_host, settings.gateway_port)
    log.info("LLM gateway serving %s", url)
    # What start-up made lives as long as the process: frozen, a full collection does
    # not walk it (bench/gateway.py saw 60-70 ms pauses without this).
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
    finally:
        await gateway.stop()
        await database.close()
