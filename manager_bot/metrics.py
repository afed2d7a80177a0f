"""The manager's Prometheus metrics, and the aiogram middlewares that feed them.

Names start with `hatchbot_manager_`; the README's observability section lists
them. Agents' own figures (messages, tokens) are the runtime's `hatchbot_agent_*`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiogram import BaseMiddleware
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods.base import TelegramType
from aiogram.types import TelegramObject, Update
from prometheus_client import Counter, Gauge, Histogram

from manager_bot.logs import new_request_id

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import Response, TelegramMethod

UPDATES = Counter(
    "hatchbot_manager_updates_total",
    "Updates the manager handled, by type and outcome (ok or error)",
    ["type", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "hatchbot_manager_handler_seconds",
    "Time from an update's arrival to its handler's return, by type",
    ["type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
)
DEPLOYS = Counter(
    "hatchbot_manager_deploys_total",
    "Deploys by outcome: ok, failed (a step failed, rolled back) or refused (bad input, quota)",
    ["outcome"],
)
AGENTS = Gauge(
    "hatchbot_manager_agents",
    "Agents by desired state and last observed state (read at scrape time)",
    ["desired", "observed"],
)
HEALTH_SWEEP_SECONDS = Histogram(
    "hatchbot_manager_health_sweep_seconds",
    "Duration of one health sweep over every running agent",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120),
)
# For alerts (k8s/monitoring/): a failing sweep, and one that no longer completes at all.
HEALTH_SWEEPS = Counter(
    "hatchbot_manager_health_sweeps_total",
    "Health sweeps by outcome: ok, or failed (the backend or the database could not be read)",
    ["outcome"],
)
HEALTH_SWEEP_LAST_SUCCESS = Gauge(
    "hatchbot_manager_health_sweep_last_success_timestamp_seconds",
    "When a health sweep last completed on this replica (0: not yet)",
)
for _outcome in ("ok", "failed"):  # both series from the start: `increase` needs them
    HEALTH_SWEEPS.labels(_outcome)
HEALTH_NOTIFICATIONS = Counter(
    "hatchbot_manager_health_notifications_total",
    "Health messages sent to owners, by kind (down, degraded, back, digest, muted)",
    ["kind"],
)
BROADCAST_MESSAGES = Counter(
    "hatchbot_manager_broadcast_messages_total",
    "Broadcast deliveries by outcome: sent, failed, blocked, uncertain",
    ["outcome"],
)
BROADCAST_REMAINING = Gauge(
    "hatchbot_manager_broadcast_remaining",
    "Recipients not yet sent to, per running broadcast",
    ["broadcast"],
)
TELEGRAM_ERRORS = Counter(
    "hatchbot_manager_telegram_errors_total",
    "Bot API calls that failed, by method and HTTP code (0: network)",
    ["method", "code"],
)
# Most specific first: subclasses before their bases.
_CODES: tuple[tuple[type[Exception], str], ...] = (
    (TelegramRetryAfter, "429"),
    (TelegramUnauthorizedError, "401"),
    (TelegramForbiddenError, "403"),
    (TelegramNotFound, "404"),
    (TelegramConflictError, "409"),
    (TelegramEntityTooLarge, "413"),
    (TelegramBadRequest, "400"),
    (TelegramServerError, "5xx"),
    (TelegramNetworkError, "0"),
)


def error_code(error: TelegramAPIError) -> str:
    return next((code for kind, code in _CODES if isinstance(error, kind)), "other")


class TelegramErrorMetrics(BaseRequestMiddleware):
    """Counts failed Bot API calls; installed on every aiogram session the manager uses."""

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        try:
            return await make_request(bot, method)
        except TelegramAPIError as error:
            TELEGRAM_ERRORS.labels(method.__api_method__, error_code(error)).inc()
            raise


class UpdateMetricsMiddleware(BaseMiddleware):
    """Outermost: gives each update a request id for its log lines and times its handling."""

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        kind = (event.event_type if isinstance(event, Update) else None) or "unknown"
        new_request_id()
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await handler(event, data)
            outcome = "ok"
            return result
        finally:
            HANDLER_SECONDS.labels(kind).observe(time.perf_counter() - started)
            UPDATES.labels(kind, outcome).inc()


def set_agent_counts(counts: dict[tuple[str, str], int]) -> None:
    """Replace the agents gauge with fresh counts from the database."""
    AGENTS.clear()
    for (desired, observed), count in counts.items():
        AGENTS.labels(desired, observed).set(count)
