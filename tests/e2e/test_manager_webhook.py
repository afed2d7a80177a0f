"""The manager in webhook mode: Telegram posts to it, one or several replicas serve.

Replicas are whole managers assembled as `python -m manager_bot` assembles them, on
one PostgreSQL database and one Redis, each with its own webhook listener on
127.0.0.1; the fake Telegram delivers the manager bot's updates to them in turn, as
a load balancer in front of the replicas would. The last test runs them as processes
and kills one with SIGKILL mid-drain.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as redis_asyncio

from manager_bot.app import ManagerParts, assemble_manager
from manager_bot.backends.local import LocalBackend
from manager_bot.config import ManagerSettings
from manager_bot.crypto import Vault, generate_key
from manager_bot.db.models import User
from manager_bot.intake.serve import WebhookIntake
from runtime.settings_loading import load_settings
from tests.e2e.conftest import fill_wizard, start_manager_process, stop_process
from tests.fakes.loopback import free_port
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.fakes.user import SimUser
from tests.fakes.waiting import until, wait_until

MANAGER_HOST = "manager.example.com"
PUBLIC_URL = f"https://{MANAGER_HOST}"
SECRET = "webhook-secret_0123456789abcdefXYZ"
PATH = hashlib.sha256(SECRET.encode()).hexdigest()[:32]  # as the README tells operators


class Replica:
    """One manager replica in this process: assembled, listening, its webhook set."""

    def __init__(
        self, settings: ManagerSettings, vault: Vault, data_dir: Path, *, sweep_every: float
    ) -> None:
        self._settings = settings
        self._sweep_every = sweep_every
        self._vault = vault
        self._data_dir = data_dir
        self._cleanup = contextlib.AsyncExitStack()
        self.parts: ManagerParts
        self.intake: WebhookIntake
        self.url = ""

    async def start(self) -> None:
        backend = LocalBackend(data_dir=self._data_dir)
        self._cleanup.push_async_callback(backend.close)
        self.parts = await assemble_manager(
            self._settings, cleanup=self._cleanup, vault=self._vault, backend=backend
        )
        # A short lock: a replica that vanished is taken over quickly in tests.
        self.intake = WebhookIntake(
            settings=self._settings, bot=self.parts.bot, dispatcher=self.parts.dispatcher,
            database=self.parts.database, bans=self.parts.bans, languages=self.parts.languages,
            lock_ms=1500, sweep_every=self._sweep_every,
        )  # fmt: skip
        port = await self.intake.listen()
        self.url = f"http://127.0.0.1:{port}"
        await self.intake.set_webhook()
        self.intake.start_background()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.intake.stop(grace=5)
        await self._cleanup.aclose()


def replica_env(telegram: FakeTelegram, openai_server: FakeOpenAI, bot: FakeBot) -> dict[str, str]:
    return {
        "MANAGER_BOT_TOKEN": bot.token,
        "TELEGRAM_API_URL": telegram.url,
        "OPENAI_API_KEY": "sk-platformkeyplatformkey00",
        "OPENAI_BASE_URL": openai_server.url,
        "PUBLIC_URL": PUBLIC_URL,
        "MANAGER_WEBHOOK": "true",
        "MANAGER_WEBHOOK_SECRET": SECRET,
        "MANAGER_WEBHOOK_PORT": "0",
    }


@contextlib.asynccontextmanager
async def replicas(
    count: int, *, telegram: FakeTelegram, openai_server: FakeOpenAI, database_url: str,
    redis_url: str | None, tmp_path: Path, env: dict[str, str] | None = None,
    sweep_every: float = 0.2,
) -> AsyncIterator[tuple[FakeBot, list[Replica]]]:  # fmt: skip
    """`count` replicas of one manager; Telegram delivers to each in turn. With a long
    `sweep_every` the replica an update reaches is the one that handles it."""
    bot = telegram.add_bot(username="hatchbot_bot", can_manage_bots=True)
    vault = Vault([generate_key()])  # one installation: one set of keys
    started: list[Replica] = []
    try:
        for number in range(count):
            settings_env = {
                **replica_env(telegram, openai_server, bot),
                "DATABASE_URL": database_url,
                "GATEWAY_PORT": str(free_port()),
                **({"REDIS_URL": redis_url} if redis_url else {"MANAGER_REPLICAS": "1"}),
                **(env or {}),
            }
            settings = load_settings(ManagerSettings, settings_env)
            replica = Replica(settings, vault, tmp_path / f"r{number}", sweep_every=sweep_every)
            started.append(replica)
            await replica.start()
        telegram.replicas[MANAGER_HOST] = [replica.url for replica in started]
        yield bot, started
    finally:
        for replica in started:
            await replica.stop()


async def post_update(url: str, update: dict[str, Any], secret: str | None) -> int:
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/telegram/{PATH}", json=update, headers=headers) as response,
    ):
        return response.status


async def language_keyboards(user: SimUser, count: int) -> list[dict[str, Any]]:
    """`count` /language keyboards, answered one by one."""
    found = []
    for _ in range(count):
        await user.send("/language")
        found.append(await user.wait_for(text_contains="Pick the language"))
    return found


async def grown(count: Callable[[], int], before: int, timeout: float = 10) -> None:
    """Until `count()` is above `before`."""
    await until(lambda: count() > before, timeout=timeout)


def texts_sent(user: SimUser) -> list[str]:
    return [str(message.get("text", "")) for message in user.messages()]


async def test_wrong_secret_is_refused_and_the_right_one_is_answered(
    telegram: FakeTelegram, openai_server: FakeOpenAI, postgres_url: str, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    async with replicas(
        1, telegram=telegram, openai_server=openai_server, database_url=postgres_url,
        redis_url=redis_url, tmp_path=tmp_path,
    ) as (bot, (replica,)):  # fmt: skip
        user = telegram.user(bot)
        forged = {
            "update_id": 900_001,
            "message": {
                "message_id": 1, "date": 1, "chat": user.chat, "from": user.as_user(),
                "text": "/help", "entities": [{"type": "bot_command", "offset": 0, "length": 5}],
            },
        }  # fmt: skip
        assert await post_update(replica.url, forged, "not-the-secret") == 401
        assert await post_update(replica.url, forged, None) == 401
        assert await post_update(replica.url, {"hello": "world"}, SECRET) == 400
        # Nothing of the refused update was stored or handled.
        assert replica.intake.inbox is not None
        assert await replica.intake.inbox.pending(f"u{user.chat_id}") == 0
        assert user.messages() == []

        await user.send("/help")
        help_text = await user.wait_for(text_contains="/deploy")
        assert "/deploy" in help_text["text"]
        assert bot.webhook is not None and bot.webhook.last_error_message is None


async def test_set_webhook_names_the_url_the_secret_and_managed_bot(
    telegram: FakeTelegram, openai_server: FakeOpenAI, postgres_url: str, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    async with replicas(
        2, telegram=telegram, openai_server=openai_server, database_url=postgres_url,
        redis_url=redis_url, tmp_path=tmp_path,
    ) as (bot, _):  # fmt: skip
        calls = telegram.calls("setWebhook", bot=bot)
        assert len(calls) == 2  # each replica sets the same webhook at its start
        for call in calls:
            assert call.params["url"] == f"{PUBLIC_URL}/telegram/{PATH}"
            assert call.params["secret_token"] == SECRET
        assert bot.webhook is not None
        assert bot.webhook.url == f"{PUBLIC_URL}/telegram/{PATH}"
        assert bot.webhook.secret_token == SECRET
        allowed = bot.webhook.allowed_updates or []
        assert {"message", "callback_query", "managed_bot"} <= set(allowed)
    # Replicas stopped: the webhook stays for the others (none deleted it).
    assert bot.webhook is not None
    assert telegram.calls("deleteWebhook", bot=bot) == []


async def test_one_replica_without_redis_serves_the_webhook(
    telegram: FakeTelegram, openai_server: FakeOpenAI, sqlite_url: str, tmp_path: Path
) -> None:
    async with replicas(
        1, telegram=telegram, openai_server=openai_server, database_url=sqlite_url,
        redis_url=None, tmp_path=tmp_path,
    ) as (bot, (replica,)):  # fmt: skip
        assert replica.intake.inbox is None
        user = telegram.user(bot)
        await fill_wizard(user, telegram, "solo_bot")


# Commands and taps whose answers differ, so their order shows in the chat.
BURST = ["/start", "tap", "/help", "/language", "tap", "/agents", "/help", "tap", "/start"]


async def test_two_replicas_keep_one_users_burst_in_order(
    telegram: FakeTelegram, openai_server: FakeOpenAI, postgres_url: str, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    async with replicas(
        2, telegram=telegram, openai_server=openai_server, database_url=postgres_url,
        redis_url=redis_url, tmp_path=tmp_path,
    ) as (bot, _):  # fmt: skip
        user = telegram.user(bot)
        # The wizard step by step, each update at the other replica: its state is shared.
        await fill_wizard(user, telegram, "first_bot")
        await user.send("/cancel")
        await user.wait_for(text_contains="ancel")

        # The burst, one step at a time first: the answers it must get, in this order.
        # Each tap is on a language keyboard of its own (a tap edits the one it is on).
        taps = BURST.count("tap")
        expected: list[str] = []
        keyboards = await language_keyboards(user, taps)
        for step in BURST:
            mark, answered = len(user.messages()), len(user.callback_answers())
            if step == "tap":
                await user.press_callback(keyboards.pop(), "lg:en")
                await grown(lambda: len(user.callback_answers()), answered)
            else:
                await user.send(step)
                await grown(lambda: len(user.messages()), mark)
                expected.append(texts_sent(user)[mark])

        # Then the same burst at once, without waiting, to both replicas in turn. The
        # first answer is slow: the replica with the next update must wait for it.
        keyboards = await language_keyboards(user, taps)
        for method in ("sendMessage", "answerCallbackQuery"):
            telegram.inject_fault(method, status=None, delay=0.5, times=1, bot=bot)
        mark, answered = len(user.messages()), len(user.callback_answers())
        for step in BURST:
            if step == "tap":
                await user.press_callback(keyboards.pop(), "lg:en")
            else:
                await user.send(step)
        await until(
            lambda: (
                len(user.messages()) >= mark + len(expected)
                and len(user.callback_answers()) >= answered + taps
            ),
            timeout=30,
        )
        assert texts_sent(user)[mark:] == expected
        assert len(user.callback_answers()) == answered + taps
        assert bot.webhook is not None and bot.webhook.delivered >= 2 * len(BURST)


async def test_a_ban_given_on_one_replica_stops_the_user_on_the_other(
    telegram: FakeTelegram, openai_server: FakeOpenAI, postgres_url: str, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    admin_id = 900_000_001
    async with replicas(
        2, telegram=telegram, openai_server=openai_server, database_url=postgres_url,
        redis_url=redis_url, tmp_path=tmp_path, env={"ADMIN_IDS": str(admin_id)},
    ) as (bot, both):  # fmt: skip
        user = telegram.user(bot)
        await user.send("/help")
        await user.wait_for(text_contains="/deploy")
        database = both[0].parts.database

        async def recorded() -> bool:  # the user's row is written as their update ends
            async with database.session() as session:
                return await session.get(User, user.chat_id) is not None

        await wait_until(recorded)
        admin = telegram.user(bot, user_id=admin_id, first_name="Admin")
        await admin.send(f"/ban {user.chat_id}")
        await admin.wait_for(text_contains=f"User {user.chat_id} is banned")
        # Each replica learns it within its refresh (a second); then, wherever the
        # user's updates land, they are refused.
        await until(lambda: all(user.chat_id in replica.parts.bans for replica in both))
        for _ in range(2):
            await user.send("/help")
        await user.wait_for(text_contains="suspended")
        # Unbanned, everywhere: the next /help is answered, after the two refused ones
        # (one user's updates are handled in order), which got only the note.
        await admin.send(f"/unban {user.chat_id}")
        await until(lambda: not any(user.chat_id in replica.parts.bans for replica in both))
        await user.send("/help")
        await user.wait_for(text_contains="/deploy")
        between = texts_sent(user)[1:-1]
        assert between and all("suspended" in text for text in between), between


async def test_a_language_picked_on_one_replica_is_spoken_by_the_other(
    telegram: FakeTelegram, openai_server: FakeOpenAI, postgres_url: str, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    async with replicas(
        2, telegram=telegram, openai_server=openai_server, database_url=postgres_url,
        redis_url=redis_url, tmp_path=tmp_path, sweep_every=3600,
    ) as (bot, (first, second)):  # fmt: skip
        user = telegram.user(bot, language_code="en")
        lane = f"u{user.id}"

        async def on(replica: Replica) -> None:
            """The next updates reach `replica`, once nobody drains the user's lane."""

            async def free() -> bool:
                assert replica.intake.inbox is not None
                return not await replica.intake.inbox.held(lane)

            await wait_until(free)
            telegram.replicas[MANAGER_HOST] = [replica.url]

        await on(second)
        await user.send("/help")  # the second replica reads the user's language: none picked
        await user.wait_for(text_contains="/deploy — create a new AI bot")
        await on(first)
        await user.send("/language")
        await user.wait_for(text_contains="Pick the language")
        await user.press("Русский")
        await user.wait_for(text_contains="теперь я говорю с вами по-русски")
        await on(second)
        await user.send("/help")
        await user.wait_for(text_contains="/deploy — создать нового ИИ-бота")


async def test_a_replica_killed_mid_drain_leaves_the_rest_to_the_other(
    telegram: FakeTelegram, postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    bot = telegram.add_bot(username="hatchbot_bot", can_manage_bots=True)
    ports = [free_port(), free_port()]
    env = {
        "DATABASE_URL": postgres_url, "REDIS_URL": redis_url, "ENCRYPTION_KEYS": generate_key(),
        "PUBLIC_URL": PUBLIC_URL, "MANAGER_WEBHOOK": "true", "MANAGER_WEBHOOK_SECRET": SECRET,
        "METRICS_PORT": "0",
    }  # fmt: skip
    processes = []
    telegram.replicas[MANAGER_HOST] = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        # One after the other: two first starts at once would both migrate the new
        # database (see the README on rolling out several replicas).
        for number, port in enumerate(ports, start=1):
            cwd = tmp_path / f"replica{number}"
            cwd.mkdir()
            processes.append(
                await start_manager_process(
                    telegram, bot, cwd, **env, MANAGER_WEBHOOK_PORT=str(port)
                )
            )
            await grown(lambda: len(telegram.calls("setWebhook", bot=bot)), number - 1, 60)
        user = telegram.user(bot)
        commands = ["/start", "/help", "/agents", "/start", "/help", "/agents"]
        answer_to: dict[str, str] = {}  # what each command gets, asked one at a time
        for command in dict.fromkeys(commands):
            before = len(user.messages())
            await user.send(command)
            await grown(lambda: len(user.messages()), before, 30)
            answer_to[command] = texts_sent(user)[before]

        # Every answer to this user now takes a second: a drain is caught in the middle.
        telegram.inject_fault(
            "sendMessage", status=None, delay=1.0, times=100, bot=bot, chat_id=user.chat_id
        )
        mark = len(user.messages())
        for command in commands:
            await user.send(command)
        await until(lambda: len(user.messages()) > mark, timeout=30)
        seen_at_kill = len(user.messages()) - mark
        store = redis_asyncio.from_url(redis_url)
        try:
            holder = await store.get(f"hatchbot:intake:{bot.id}:{{u{user.chat_id}}}:lock")
        finally:
            await store.aclose()
        assert holder is not None, "a replica holds the user's lane while it drains"
        pid = int(str(holder.decode() if isinstance(holder, bytes) else holder).split(":")[1])
        victim = next(process for process in processes if process.pid == pid)
        os.kill(pid, signal.SIGKILL)
        await victim.wait()

        # The survivor takes the lane once the dead one's lock expires, and finishes it.
        last_answer = answer_to[commands[-1]]

        def answered() -> list[str] | None:
            # Until the last update's answer: nothing is left to handle after it.
            got = texts_sent(user)[mark:]
            return got if len(got) >= len(commands) and got[-1] == last_answer else None

        got = await until(answered, timeout=60)
        # Every update answered, in order; the one in hand at the kill is handled again by
        # the survivor (at least once), so its answer may come twice, one after the other.
        wanted = [answer_to[command] for command in commands]
        if got != wanted:
            assert len(got) == len(wanted) + 1, got
            twice = next(i for i, (a, b) in enumerate(zip(got, wanted, strict=False)) if a != b)
            assert twice >= seen_at_kill - 1, got
            assert got == [*wanted[:twice], got[twice - 1], *wanted[twice:]], got
    finally:
        for process in processes:
            print(await stop_process(process))  # shown when the test fails


async def test_back_to_polling_the_webhook_is_deleted_at_start(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    bot = telegram.add_bot(username="hatchbot_bot", can_manage_bots=True)
    # What webhook mode left behind.
    hook = {"url": f"{PUBLIC_URL}/telegram/{PATH}", "secret_token": SECRET}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{telegram.url}/bot{bot.token}/setWebhook", json=hook) as response,
    ):
        assert response.status == 200
    process = await start_manager_process(telegram, bot, tmp_path, METRICS_PORT="0")
    try:
        user = telegram.user(bot)
        await until(lambda: telegram.calls("getUpdates", bot=bot), timeout=60)
        await user.send("/help")
        await user.wait_for(text_contains="/deploy", timeout=30)
        assert bot.webhook is None
        assert len(telegram.calls("deleteWebhook", bot=bot)) == 1
    finally:
        print(await stop_process(process))  # shown when the test fails
