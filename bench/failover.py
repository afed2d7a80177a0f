"""Three manager replicas in webhook mode lose their leader twice, under load.

Prints one JSON line:
{"replicas": 3, "updates": n, "errors": n, "lost_updates": n, "out_of_order": n,
 "leader_takeover_s": x, "duplicate_sweeps": n, "broadcast_duplicates": n, ...}

Three real manager processes (`python -m manager_bot`, BACKEND=kubernetes,
MANAGER_WEBHOOK=true) share one new PostgreSQL database and one Redis; the fake
Telegram delivers the manager bot's updates to them in turn (a load balancer), and
the fake Kubernetes API holds the Lease. While users stream through the deploy
wizard (each step waits for its answer; a step with no answer within the time-out
is a lost update) and end with two commands sent at once (their answers must come
in the order sent), the bench:
1. has the admin broadcast to everyone (BROADCAST_RATE 5/s, so it takes a while)
   and SIGKILLs the leader once some copies are out: mid-broadcast;
2. once a new leader holds the Lease, slows the cluster's list calls and SIGKILLs
   that leader while its sweep (or reconcile) waits on one: mid-sweep.
`leader_takeover_s` is the longest time from a kill to a live replica holding the
Lease (target: within the lease duration, 15 s). Sweeps are read from each
replica's `hatchbot_manager_health_sweeps_total`: two replicas sweeping within half
a HEALTH_INTERVAL of each other is a duplicate. Broadcast copies are counted at the
fake Telegram: more than one copy to a chat is a duplicate (a copy left "uncertain"
by a kill is not sent again, and is reported as such).

Usage: TEST_POSTGRES_URL=... TEST_REDIS_URL=... python bench/failover.py [--users 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
from redis import asyncio as redis_asyncio  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from manager_bot.crypto import generate_key  # noqa: E402
from manager_bot.leader import LEASE_NAME  # noqa: E402
from tests.e2e.conftest import start_manager_process, stop_process  # noqa: E402
from tests.fakes.kubernetes_api import FakeKubernetes  # noqa: E402
from tests.fakes.loopback import free_port  # noqa: E402
from tests.fakes.openai_api import FakeOpenAI  # noqa: E402
from tests.fakes.telegram_api import FakeBot, FakeTelegram  # noqa: E402
from tests.fakes.user import SimUser  # noqa: E402
from tests.fakes.waiting import until  # noqa: E402

HOST = "manager.example.com"
NAMESPACE = "hatchbot-system"
ADMIN = 900_000_001
HEALTH_INTERVAL = 2.0
ANSWER_TIMEOUT = 45.0  # longer than a takeover: an update waits in Redis meanwhile
BROADCAST = "Failover drill: please ignore"
SWEEPS = re.compile(r'^hatchbot_manager_health_sweeps_total\{outcome="ok"\} (\S+)$', re.M)


@dataclass
class Replica:
    process: asyncio.subprocess.Process
    webhook_url: str
    metrics_url: str
    log: Path
    identity: str = ""
    sweeps_seen: float = 0.0
    sweep_times: list[float] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


@dataclass
class Tally:
    updates: int = 0
    lost: int = 0
    out_of_order: int = 0
    errors: int = 0


async def new_database(base_url: str) -> tuple[str, str]:
    base = make_url(base_url).set(drivername="postgresql+asyncpg")
    name = f"hatchbot_failover_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(base.set(drivername="postgresql").render_as_string(False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return base.set(database=name).render_as_string(hide_password=False), name


async def drop_database(base_url: str, name: str) -> None:
    base = make_url(base_url).set(drivername="postgresql")
    admin = await asyncpg.connect(base.render_as_string(False))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def step(tally: Tally, user: SimUser, action: Any, expect: str) -> bool:
    """One update and the answer it must get; False (and counted lost) without one."""
    tally.updates += 1
    try:
        await action
        await user.wait_for(text_contains=expect, timeout=ANSWER_TIMEOUT)
    except AssertionError:
        tally.lost += 1
        return False
    return True


async def one_user(
    telegram: FakeTelegram, bot: FakeBot, index: int, tally: Tally, start_at: float,
    rng: random.Random,
) -> None:  # fmt: skip
    await asyncio.sleep(start_at)
    agent_bot = telegram.add_bot(username=f"drill{index:04d}_bot")
    user = telegram.user(bot, first_name=f"User{index}")
    steps = [
        (lambda: user.send("/start"), "Hatchbot"),
        (lambda: user.send("/deploy"), "Let's make your AI bot"),
        (lambda: user.press("I already have a bot", timeout=ANSWER_TIMEOUT), "Paste"),
        (lambda: user.send(agent_bot.token), "Got it"),
        (lambda: user.press("OpenAI · gpt-4o-mini", timeout=ANSWER_TIMEOUT), "Last step"),
        (lambda: user.send("You are a drill."), "Ready to deploy"),
        (lambda: user.send("/cancel"), "Cancelled. Nothing was changed."),
    ]
    try:
        for action, expect in steps:
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            if not await step(tally, user, action(), expect):
                return  # the wizard cannot go on without that answer
        # Two commands at once: their answers must come in the order they were sent.
        mark = len(user.messages())
        tally.updates += 2
        await user.send("/help")
        await user.send("/agents")

        def both() -> list[str] | None:
            got = [str(m.get("text", "")) for m in user.messages()[mark:]]
            return got if len(got) >= 2 else None

        try:
            first, second = (await until(both, timeout=ANSWER_TIMEOUT))[:2]
        except AssertionError:
            tally.lost += 2 - len(user.messages()[mark:])
            return
        if not ("/deploy —" in first and "/deploy —" not in second):
            tally.out_of_order += 1
    except Exception:  # anything but a missing answer: the bench itself went wrong
        tally.errors += 1


async def sweeps_of(http: aiohttp.ClientSession, replica: Replica) -> float | None:
    try:
        async with http.get(f"{replica.metrics_url}/metrics") as answer:
            found = SWEEPS.search(await answer.text())
    except (aiohttp.ClientError, TimeoutError):
        return None
    return float(found.group(1)) if found else 0.0


async def watch_sweeps(replicas: list[Replica], stop: asyncio.Event) -> None:
    """When each replica's sweep counter went up (sampled every 0.2 s)."""
    timeout = aiohttp.ClientTimeout(total=1)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while not stop.is_set():
            for replica in replicas:
                if not replica.alive:
                    continue
                count = await sweeps_of(http, replica)
                if count is not None and count > replica.sweeps_seen:
                    replica.sweep_times.append(time.monotonic())
                    replica.sweeps_seen = count
            await asyncio.sleep(0.2)


def duplicate_sweeps(replicas: list[Replica]) -> int:
    events = sorted((t, n) for n, r in enumerate(replicas) for t in r.sweep_times)
    return sum(
        1
        for (before, who), (after, other) in itertools.pairwise(events)
        if who != other and after - before < HEALTH_INTERVAL / 2
    )


def holder(kube: FakeKubernetes) -> str:
    lease = kube.get_object("leases", NAMESPACE, LEASE_NAME)
    return str((lease or {}).get("spec", {}).get("holderIdentity") or "")


def identify(replica: Replica) -> str:
    """The replica's Lease identity, from its log ("leader election: campaigning as …")."""
    found = re.search(r"campaigning as (\S+)", replica.log.read_text(errors="replace"))
    replica.identity = found.group(1) if found else ""
    return replica.identity


async def kill_leader(
    kube: FakeKubernetes, telegram: FakeTelegram, replicas: list[Replica]
) -> float:
    """SIGKILL whoever holds the Lease; seconds until a live replica holds it."""
    leader = next(r for r in replicas if r.alive and r.identity == holder(kube))
    os.kill(leader.process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    await leader.process.wait()
    # The load balancer's health check drops it (deliveries to it would fail anyway).
    telegram.replicas[HOST] = [r.webhook_url for r in replicas if r.alive]
    live = {r.identity for r in replicas if r.alive}
    await until(lambda: holder(kube) in live, timeout=60)
    return time.monotonic() - killed_at


def copies(telegram: FakeTelegram, bot: FakeBot, since: int) -> dict[str, int]:
    """Copies per chat among the sendMessage calls from `since` on (after the preview)."""
    sent: dict[str, int] = {}
    for call in telegram.calls("sendMessage", bot=bot)[since:]:
        if call.status == 200 and BROADCAST in str(call.params.get("text", "")):
            chat = str(call.params.get("chat_id"))
            sent[chat] = sent.get(chat, 0) + 1
    return sent


async def broadcast(admin: SimUser, telegram: FakeTelegram, bot: FakeBot) -> int:
    """Sends it; returns where its copies start among the bot's sendMessage calls (the
    admin's preview, which quotes it, comes before)."""
    await admin.send("/broadcast")
    await admin.wait_for(text_contains="Send the message to broadcast", timeout=ANSWER_TIMEOUT)
    await admin.send(BROADCAST)
    await admin.wait_for(text_contains="Who should get it?", timeout=ANSWER_TIMEOUT)
    await admin.press("All users", timeout=ANSWER_TIMEOUT)
    await admin.wait_for(text_contains="Send it to", timeout=ANSWER_TIMEOUT)
    since = len(telegram.calls("sendMessage", bot=bot))
    await admin.press("Send", timeout=ANSWER_TIMEOUT)
    return since


async def main(users: int, spawn_rate: float, seed: int) -> dict[str, Any]:
    postgres = os.environ.get("TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1/test")
    redis_url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = redis_url.rsplit("/", 1)[0] + "/14"  # a db of its own, emptied first
    store = redis_asyncio.from_url(redis_url)
    await store.flushdb()
    await store.aclose()
    database_url, database = await new_database(postgres)
    tally, takeovers = Tally(), []
    replicas: list[Replica] = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            async with (
                FakeTelegram() as telegram,
                FakeOpenAI() as llm,
                FakeKubernetes(auto_ready=True) as kube,
            ):
                for namespace in ("agents", NAMESPACE):
                    kube.put_object("namespaces", {"metadata": {"name": namespace}})
                kubeconfig = kube.write_kubeconfig(Path(scratch) / "kubeconfig")
                bot = telegram.add_bot(username="hatchbot_bot", can_manage_bots=True)
                env = {
                    "BACKEND": "kubernetes", "KUBECONFIG": str(kubeconfig),
                    "K8S_MANAGER_NAMESPACE": NAMESPACE, "PUBLIC_URL": f"https://{HOST}",
                    "MANAGER_WEBHOOK": "true", "MANAGER_WEBHOOK_SECRET": "failover-drill-secret",
                    "DATABASE_URL": database_url, "REDIS_URL": redis_url,
                    "ENCRYPTION_KEYS": generate_key(), "OPENAI_API_KEY": "sk-drilldrilldrill0000",
                    "OPENAI_BASE_URL": llm.url, "ADMIN_IDS": str(ADMIN),
                    "HEALTH_INTERVAL": str(int(HEALTH_INTERVAL)), "BROADCAST_RATE": "5",
                    "MAX_AGENTS_PER_USER": "3",
                }  # fmt: skip
                for number in range(3):
                    cwd = Path(scratch) / f"replica{number}"
                    cwd.mkdir()
                    hook, metrics = free_port(), free_port()
                    process = await start_manager_process(
                        telegram, bot, cwd, **env, MANAGER_WEBHOOK_PORT=str(hook),
                        METRICS_HOST="127.0.0.1", METRICS_PORT=str(metrics),
                    )  # fmt: skip
                    replicas.append(
                        Replica(process, f"http://127.0.0.1:{hook}",
                                f"http://127.0.0.1:{metrics}", cwd / "manager-output.log")
                    )  # fmt: skip
                telegram.replicas[HOST] = [r.webhook_url for r in replicas]
                await until(lambda: len(telegram.calls("setWebhook", bot=bot)) >= 3, timeout=90)
                await until(lambda: holder(kube), timeout=60)
                for replica in replicas:
                    await until(lambda r=replica: identify(r), timeout=30)

                stop = asyncio.Event()
                watcher = asyncio.create_task(watch_sweeps(replicas, stop))
                admin = telegram.user(bot, user_id=ADMIN, first_name="Admin")
                await admin.send("/start")
                await admin.wait_for(text_contains="Hatchbot", timeout=ANSWER_TIMEOUT)
                rng = random.Random(seed)
                crowd = asyncio.gather(
                    *(
                        one_user(telegram, bot, index, tally, index / spawn_rate, rng)
                        for index in range(users)
                    )
                )
                # 1. Mid-broadcast, once half the crowd has joined.
                await asyncio.sleep(users / spawn_rate / 2)
                since = await broadcast(admin, telegram, bot)
                await until(lambda: sum(copies(telegram, bot, since).values()) >= 3, timeout=60)
                takeovers.append(await kill_leader(kube, telegram, replicas))
                # 2. Mid-sweep: the cluster answers list calls slowly; kill while one waits.
                kube.inject_fault(status=None, verb="list", resource="deployments",
                                  delay=1.5, times=1000)  # fmt: skip
                mark = len(kube.requests)
                await until(
                    lambda: any(r.verb == "list" and r.resource == "deployments"
                                for r in kube.requests[mark:]),
                    timeout=60,
                )  # fmt: skip
                takeovers.append(await kill_leader(kube, telegram, replicas))
                await crowd
                report = await admin.wait_for(text_contains="done in", timeout=120)
                await asyncio.sleep(HEALTH_INTERVAL * 2)  # the survivor sweeps on
                stop.set()
                await watcher
                sent = copies(telegram, bot, since)
                uncertain = re.search(r"not sent again\): (\d+)", str(report.get("text", "")))
    finally:
        for replica in replicas:
            with contextlib.suppress(Exception):
                await stop_process(replica.process)
        await drop_database(postgres, database)
    return {
        "replicas": 3,
        "updates": tally.updates,
        "errors": tally.errors,
        "lost_updates": tally.lost,
        "out_of_order": tally.out_of_order,
        "leader_takeover_s": round(max(takeovers), 2),
        "takeovers_s": [round(t, 2) for t in takeovers],
        "duplicate_sweeps": duplicate_sweeps(replicas),
        "broadcast_duplicates": sum(n - 1 for n in sent.values() if n > 1),
        "broadcast_copies": sum(sent.values()),
        "broadcast_uncertain": int(uncertain.group(1)) if uncertain else 0,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--spawn-rate", type=float, default=2.0, help="users started per second")
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.users, arguments.spawn_rate, arguments.seed))))
