"""The runtime's process: HTTP endpoints, webhook or polling intake, graceful shutdown.

Webhook mode (pods): Telegram POSTs to `/webhook/{AGENT_ID}`; an update is
acknowledged at once and handled in the background, because Telegram retries
any update not answered quickly. Polling mode (the local backend): getUpdates
long polling, with the same HTTP server for health and metrics (bound to
127.0.0.1 there, `HOST`) and a log file the process rotates itself (`LOG_FILE`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import logging.handlers
import os
import signal
import sys

from aiohttp import web

from runtime.chat import Conversations, Identity
from runtime.config import RuntimeSettings
from runtime.llm import Llm, build_client
from runtime.media import MediaPolicy
from runtime.memory import GatewayMemory, Memory
from runtime.metrics import Metrics
from runtime.redaction import install_redaction
from runtime.settings_loading import EXIT_BAD_CONFIG
from runtime.tasks import cancel_and_wait
from runtime.telegram import BotApi, TelegramApiError
from runtime.tools import toolbox_for

log = logging.getLogger("runtime")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
DRAIN_SECONDS = 10.0
MEMORY_FLUSH_SECONDS = 3.0  # after the 10 s drain: within the pod's 15 s grace period
POLL_TIMEOUT = 25
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def memory_store(settings: RuntimeSettings) -> GatewayMemory | None:
    if settings.memory_url is None or settings.llm_api_key is None:
        return None
    return GatewayMemory(
        url=settings.memory_url, credential=settings.llm_api_key.get_secret_value()
    )


class Runtime:
    """One agent: its Telegram client, LLM, conversations, and HTTP app."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.api = BotApi(
            api_url=settings.telegram_api_url, token=settings.bot_token.get_secret_value()
        )
        self.llm = Llm(client=build_client(settings), model=settings.llm_model)
        self.conversations = Conversations(
            api=self.api,
            llm=self.llm,
            metrics=self.metrics,
            system_prompt=settings.system_prompt,
            history_limit=settings.history_limit,
            memory=Memory(
                limit_turns=settings.history_limit,
                store=memory_store(settings),
                idle_seconds=settings.memory_idle_days * 86400,
            ),
            allowed_user_ids=frozenset(settings.allowed_user_ids),
            media=MediaPolicy(
                vision=settings.llm_vision,
                max_image_bytes=settings.max_image_bytes,
                max_voice_seconds=settings.max_voice_seconds,
            ),
        )
        # None without MCP_SERVERS: then `mcp` is never imported.
        self.tools = toolbox_for(
            settings, llm=self.llm, api=self.api, registry=self.metrics.registry
        )
        self.conversations.tools = self.tools
        self.draining = False
        self.token_rejected = False
        self._secret = (
            settings.webhook_secret.get_secret_value().encode() if settings.webhook_secret else b""
        )
        self._background: list[asyncio.Task[None]] = []

    @property
    def ready(self) -> bool:
        return self.conversations.me is not None and bool(self.settings.llm_model)

    def web_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/memory/forget", self._forget_memory)
        if self.settings.mode == "webhook":
            app.router.add_post("/webhook/{agent_id}", self._webhook)
        return app

    async def start(self) -> None:
        await self.api.start()
        if self.tools is not None:
            self.tools.start()
        self._background.append(asyncio.create_task(self._identify()))
        if self.settings.mode == "polling":
            self._background.append(asyncio.create_task(self._poll()))

    async def stop(self) -> None:
        """Stop taking updates, finish replies in flight (bounded), release clients."""
        self.draining = True
        for task in self._background:
            await cancel_and_wait(task)
        await self.conversations.drain(DRAIN_SECONDS)
        if self.tools is not None:
            await self.tools.close()
        await self.conversations.memory.close(MEMORY_FLUSH_SECONDS)
        await self.llm.close()
        await self.api.close()

    # -- start-up --------------------------------------------------------------------

    async def _identify(self) -> None:
        """getMe until it answers: readiness means the token works."""
        delay = 0.5
        while True:
            try:
                me = await self.api.call("getMe")
            except TelegramApiError as error:
                if error.code == 401:
                    self.token_rejected = True
                    log.error("Telegram rejected the bot token; the agent stays not ready")
                    return
                log.warning("getMe failed (%s); retrying", error.code or error.description)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15)
                continue
            self.conversations.me = Identity(
                id=int(me["id"]),
                username=str(me.get("username", "")),
                first_name=str(me["first_name"]),
            )
            log.info("agent %s ready as @%s", self.settings.agent_id, me.get("username"))
            return

    async def _poll(self) -> None:
        offset = 0
        delay = 1.0
        while not self.draining:
            try:
                updates = await self.api.call(
                    "getUpdates",
                    http_timeout=POLL_TIMEOUT + 10,
                    offset=offset or None,
                    timeout=POLL_TIMEOUT,
                    allowed_updates=["message"],
                )
            except TelegramApiError as error:
                if error.code == 401:
                    log.error("Telegram rejected the bot token; polling stops")
                    return
                # 409: a webhook is set (the manager clears it); others: network trouble.
                log.warning("getUpdates failed (%s); retrying", error.code or error.description)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
                continue
            delay = 1.0
            for update in updates or []:
                offset = max(offset, int(update.get("update_id", 0)) + 1)
                self.conversations.accept(update)

    # -- HTTP --------------------------------------------------------------------------

    async def _webhook(self, request: web.Request) -> web.Response:
        if request.match_info["agent_id"] != self.settings.agent_id:
            return web.Response(status=404)
        offered = request.headers.get(SECRET_HEADER, "").encode()
        if not self._secret or not hmac.compare_digest(offered, self._secret):
            return web.Response(status=401, text="unauthorized")
        if self.draining:
            return web.Response(status=503, text="shutting down")  # Telegram retries later
        try:
            update = await request.json()
        except ValueError:
            return web.Response(status=400, text="bad update")
        if not isinstance(update, dict):
            return web.Response(status=400, text="bad update")
        self.conversations.accept(update)
        return web.Response(text="ok")

    async def _forget_memory(self, request: web.Request) -> web.Response:
        """The owner's "Forget all conversations", sent by the manager with the webhook
        secret: this process forgets at once, and the gateway before this answers."""
        offered = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
        if not self._secret or not hmac.compare_digest(offered, self._secret):
            return web.Response(status=401, text="unauthorized")
        if not await self.conversations.memory.forget_all():
            return web.Response(status=503, text="the gateway did not forget yet")
        return web.Response(text="forgotten")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.ready and not self.draining:
            return web.Response(text="ready")
        reason = "token rejected" if self.token_rejected else "starting"
        return web.Response(status=503, text=reason)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")


async def run(settings: RuntimeSettings, *, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    runtime = Runtime(settings)
    runner = web.AppRunner(runtime.web_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    await runtime.start()
    log.info(
        "agent %s serving on %s:%s (%s mode)",
        settings.agent_id,
        settings.host,
        settings.port,
        settings.mode,
    )
    await stop.wait()
    log.info("stopping: finishing replies in flight")
    await runtime.stop()
    await runner.cleanup()


class LogFile(logging.handlers.RotatingFileHandler):
    """The agent's log file, rotated by size while the process runs.

    The process's stdout and stderr are pointed at the current file, at start and
    after every rotation: what bypasses logging (a fatal error of the interpreter)
    lands among the log lines, not in a file that was rotated away or deleted."""

    def doRollover(self) -> None:
        super().doRollover()
        self.capture_standard_streams()

    def capture_standard_streams(self) -> None:
        if self.stream is None:  # only with `delay=True`, which is not used
            return
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        for descriptor in (1, 2):
            os.dup2(self.stream.fileno(), descriptor)


def log_to_file(path: str, *, max_bytes: int, backups: int) -> None:
    """Root logging into `path` (before `install_redaction`, which filters every handler)."""
    handler = LogFile(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    handler.capture_standard_streams()


def serve(settings: RuntimeSettings) -> int:
    secrets = [settings.bot_token.get_secret_value()]
    for optional in (settings.llm_api_key, settings.webhook_secret):
        if optional is not None:
            secrets.append(optional.get_secret_value())
    if settings.log_file:
        try:
            log_to_file(
                settings.log_file, max_bytes=settings.log_max_bytes, backups=settings.log_backups
            )
        except OSError as error:
            print(
                f"python -m runtime: LOG_FILE cannot be written ({error.strerror})", file=sys.stderr
            )
            return EXIT_BAD_CONFIG
    install_redaction(secrets)
    # The LLM client logs every HTTP request at INFO: a line per message is noise
    # in the agent's log and measurable CPU at hundreds of updates a second.
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        asyncio.run(run(settings))
    except Exception:
        # Through logging, so the traceback is redacted (an error may quote a URL with
        # the token); a bare traceback on stderr would not be.
        log.exception("the runtime stopped on an unexpected error")
        return 1
    return 0
