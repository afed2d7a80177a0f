"""What the LLM gateway adds to a streamed completion, and how far an agent gets past its budget.

Prints one JSON line:
{"cpus", "concurrency", "rate", "paced_requests", "requests",
 "direct": {"p50_ms", "p99_ms", "first_chunk_p50_ms", "first_chunk_p99_ms", "errors",
            "requests_per_s", "lead_in": {"p50_ms", "p99_ms", "first_chunk_p50_ms",
                                          "first_chunk_p99_ms", "errors"},
            "saturated": {the same as lead_in}},
 "gateway": {the same keys, "cpu_ms_per_request", "cpu_share",
             "saturated": {the same keys, "cpu_ms_per_request"}},
 "added_p50_ms", "added_p99_ms", "stream_first_chunk_added_ms",
 "stream_first_chunk_added_percentile", "stream_first_chunk_added_p99_ms",
 "lead_in_added_p99_ms",
 "send_lag_p99_ms", "usage_mismatch_tokens", "max_tokens_per_request",
 "budget_overrun_tokens",
 "budget": {"daily_budget", "max_tokens", "variants": [{"flush_seconds", "agents",
            "admitted", "reserved_retries", "refused", "admitted_after_refusal",
            "agent_busy", "other_errors", "first_refusal_at_tokens", "never_refused",
            "seconds", "stop_seconds", "stop_error", "stored_tokens", "reported_tokens",
            "unstored_tokens", "overrun_tokens"}, {the same, short flush}]},
 ["profile": {"loop_busy_samples", "loop_idle_samples", "other_thread_samples", "rate_hz",
              "self", "inclusive"}]}  (only with --profile)

Three processes: the fake OpenAI server, the gateway (built by `build_gateway`, as
`python -m manager_bot gateway` builds it, over SQLite, default settings but
GATEWAY_MAX_TOKENS=MAX_TOKENS and GATEWAY_FLUSH_SECONDS=--flush-seconds) and this one,
the load generator. So the gateway's event loop is its own, the fake answers at once
from a loop nobody else uses, and the gateway's CPU can be read on its own (user +
system time from /proc). `cpus` is how many CPUs the three share: with 2, they
contend, and both sides' latencies include some of that. Only 127.0.0.1 is used.

The load: `--agents` agents (rows with distinct credentials) send streamed completions
(a short multi-turn prompt, a 24-word answer streamed word by word, usage included),
once straight to the fake ("direct", the baseline, with the platform key) and once
through the gateway. A warm-up of one request per agent on each side is not counted.
Latencies are from sending the request: to its stream's last byte (p50_ms, p99_ms) and
to the first SSE line with content (first_chunk_*).

Paced phase (the latency keys: the issue's "added p99 <= 5 ms; first streamed chunk
delayed by <= 2 ms"): an open loop at `--rate` completions/s, arrivals evenly spaced
and dealt round-robin to the agents (each agent sends every agents/rate s, whether its
last answer came or not), `--paced-seconds` per side, cut into PACED_ROUNDS rounds that
alternate which side goes first; both sides get the same schedule, so noise hits both.
Not queueing behind a saturated loop, the latencies are each completion's own time
plus whatever else the gateway's loop was busy with when it came: the agents' rows
re-read in the background every GATEWAY_CACHE_SECONDS (2 s; ~1.5 ms of the loop each),
usage written every GATEWAY_FLUSH_SECONDS, the garbage collector.
Each round starts with LEAD_IN_SECONDS at the same rate that are reported apart
("lead_in"): a side idles through the other side's round, longer than
GATEWAY_CACHE_SECONDS, so all its agents' rows are stale at once and are re-read
together as the agents come back; that burst (a gateway after a lull) is not the
steady state the other figures describe.
- p50_ms / p99_ms / first_chunk_p50_ms / first_chunk_p99_ms: this phase's, lead-ins left
  out; lead_in: the lead-ins' own; lead_in_added_p99_ms: gateway - direct p99 in them.
- added_p50_ms / added_p99_ms: gateway - direct, total latency, at that percentile.
- stream_first_chunk_added_ms: gateway - direct time to the first content chunk at the
  median (stream_first_chunk_added_percentile: "p50"); stream_first_chunk_added_p99_ms:
  the same at p99.
- send_lag_p99_ms: how late this process sent, at p99, against the schedule (its own
  loop's delay: over a few ms, the generator is the bottleneck, not the gateway).
- gateway.cpu_ms_per_request: the gateway's CPU time per completion in this phase;
  gateway.cpu_share: its CPU time / wall time over its rounds (1.0 = one core busy).

Saturated phase (throughput, the issue's ">= 300 completions/s through one gateway
process"): `--requests` completions per side in a closed loop, each agent sending its
share one after another, all agents at once, cut into ROUNDS alternating rounds.
- requests_per_s: completions per second of wall time over the side's rounds.
- saturated: that phase's latencies, for information: with an instant fake they are
  mostly queueing (p50 ~ concurrency / requests_per_s), not the gateway's own time.

- usage_mismatch_tokens: sum over agents of |tokens stored in `agent_usage` - tokens
  the streams reported to the agents|, after the gateway stopped: 0 when counting is right.

Budget phase, twice: on the gateway above (GATEWAY_FLUSH_SECONDS=--flush-seconds), then
on a second gateway process with GATEWAY_FLUSH_SECONDS=--short-flush-seconds (0.05), so
that many admissions meet a flush (counts taken out of memory, not yet stored). Each time
BUDGET_AGENTS agents of `daily_token_budget` BUDGET at once, each sending completions
asking for max_tokens 4096, BUDGET_CONCURRENCY at once (GATEWAY_AGENT_CONCURRENCY's
default); the fake now answers MAX_TOKENS words (a token per word, max_tokens ignored: as
long as a provider honouring the cap could make it). A 429 `budget_reserved` (the rest
is held by requests in flight) is retried after RETRY_SECONDS; so is a 429
`daily_budget_exhausted` while other requests of the agent are in flight (it must stay
refused: `admitted_after_refusal` counts the ones that were not); an agent stops at a
`daily_budget_exhausted` with nothing of its own in flight. Then that gateway is
stopped, which writes its counts. Counts are summed over the variant's agents; token
figures are [min, max] over them.
- max_tokens_per_request: the largest max_tokens the provider was asked for in the
  budget phases (the cap, MAX_TOKENS, if the gateway caps).
- first_refusal_at_tokens: the tokens an agent's streams had reported when its first
  `daily_budget_exhausted` came: close to the budget (at most a prompt bound below,
  at most one max_tokens above) when only what is spent and counted refuses.
- reported_tokens / stored_tokens: what the agents' streams reported / `agent_usage`
  holds after the stop; unstored_tokens: sum of |stored - reported| (0 unless the
  gateway lost counts, e.g. a stop that failed: stop_error, stop_seconds).
- overrun_tokens: max(0, the larger of stored and reported - the budget), the most over
  the variant's agents; budget_overrun_tokens: the max over both variants. The ledger
  promises at most one max_tokens (MAX_TOKENS) per gateway replica.

--profile PATH: record the gateway with py-spy (--nonblocking, by function) over the paced
phase (both sides' rounds: the gateway idles in the direct ones), write its collapsed
stacks to PATH and add "profile" to the JSON: of the samples where the gateway's event
loop was busy (not waiting in select), the shares of the functions on top of the stack
("self") and anywhere on it ("inclusive"); samples of other threads (aiosqlite's) are
only counted. The sampling costs the gateway a little: latencies of such a run are not
the figures to quote.

Usage: python bench/gateway.py [--rate 300] [--paced-seconds 15] [--requests 2000]
           [--agents 50] [--flush-seconds 1] [--short-flush-seconds 0.05] [--profile PATH]
It takes under a minute (the paced phase 2 x --paced-seconds; a gateway that cannot
write at its stop waits out SQLite's 30 s busy timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manager_bot.config import PlatformSettings  # noqa: E402
from manager_bot.crypto import Vault, generate_key  # noqa: E402
from manager_bot.db.migrate import upgrade  # noqa: E402
from manager_bot.db.models import Agent, AgentUsage, User  # noqa: E402
from manager_bot.db.session import Database  # noqa: E402
from manager_bot.gateway.credentials import credential_hash, new_credential  # noqa: E402
from runtime.settings_loading import load_settings  # noqa: E402
from tests.fakes.openai_api import FakeOpenAI  # noqa: E402

PLATFORM_KEY = "sk-bench-platform-key-0123456789"
MAX_TOKENS = 256  # GATEWAY_MAX_TOKENS for the whole run; the latency phases' answers are short
BUDGET = 5_000
BUDGET_CONCURRENCY = 8
BUDGET_AGENTS = 8  # per variant, at once: more admissions meet a flush
BUDGET_ASKED_MAX_TOKENS = 4096
BUDGET_MAX_SENDS = 1_000  # a gateway that never refuses still ends the phase
RETRY_SECONDS = 0.05
ROUNDS = 8  # saturated phase
PACED_ROUNDS = 6
LEAD_IN_SECONDS = 0.5  # of each paced round, not in the paced figures: see the docstring
PROFILE_TOP = 15
PROFILE_RATE = 500
ANSWER = (
    "Sure, here is a short answer that streams word by word so the gateway forwards "
    "many small chunks before the usage arrives at the end."
)  # 24 words


def cpu_seconds(pid: int) -> float:
    """User + system time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * share) - 1)]


def messages(index: int) -> list[dict[str, str]]:
    """A short conversation: what an agent sends on the third turn of a chat."""
    return [
        {"role": "system", "content": "You are a helpful Telegram bot. Answer briefly."},
        {"role": "user", "content": f"Hi, I am user {index % 97}. What can you do?"},
        {"role": "assistant", "content": "I answer questions and keep you company."},
        {"role": "user", "content": f"Tell me something about the number {index}."},
    ]


# -- child processes ----------------------------------------------------------------------


class Child:
    """A process of its own (spawned, so it shares nothing), driven through a pipe."""

    def __init__(self, target: Any, *args: Any) -> None:
        self._conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("spawn").Process(
            target=target, args=(child, *args), daemon=True
        )
        self.process.start()
        self.info: Any = None

    async def started(self, timeout: float = 60) -> Any:
        if not await asyncio.to_thread(self._conn.poll, timeout):
            raise RuntimeError(f"{self.process.name} did not start")
        self.info = self._conn.recv()
        if isinstance(self.info, Exception):
            raise self.info
        return self.info

    async def ask(self, command: str, *args: Any) -> Any:
        self._conn.send((command, args))
        answer = await asyncio.to_thread(self._conn.recv)
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)


def _serve_fake(conn: Any) -> None:
    asyncio.run(_fake_main(conn))


async def _fake_main(conn: Any) -> None:
    async with FakeOpenAI(expected_key=PLATFORM_KEY) as fake:
        fake.reply_with(ANSWER)
        conn.send(fake.url)
        while True:
            command, args = await asyncio.to_thread(conn.recv)
            if command == "stop":
                conn.send("stopped")
                return
            if command == "reply":
                fake.reply_with(args[0])
                conn.send("ok")
            elif command == "forget":  # keep the recorded requests small
                fake.requests.clear()
                conn.send("ok")
            elif command == "max_tokens_asked":
                asked = [
                    body.get("max_completion_tokens", body.get("max_tokens")) or 0
                    for body in fake.chat_requests()
                ]
                conn.send(max(asked, default=0))


def _serve_gateway(conn: Any, env: dict[str, str], vault_key: str) -> None:
    asyncio.run(_gateway_main(conn, env, vault_key))


async def _gateway_main(conn: Any, env: dict[str, str], vault_key: str) -> None:
    from manager_bot.gateway.process import build_gateway

    try:
        settings = load_settings(PlatformSettings, env)
        database = Database(settings.database_url.get_secret_value())
        gateway = build_gateway(settings=settings, database=database, vault=Vault([vault_key]))
        url = await gateway.start("127.0.0.1", 0)
    except Exception as error:  # the parent raises it: a gateway that cannot start
        conn.send(RuntimeError(f"the gateway did not start: {error!r}"))
        return
    conn.send(url)
    command, _ = await asyncio.to_thread(conn.recv)
    assert command == "stop"
    try:
        await gateway.stop()  # writes the counted usage
        await database.close()
    except Exception as error:
        conn.send(RuntimeError(f"the gateway did not stop cleanly: {error!r}"))
        return
    conn.send("stopped")


class Profiler:
    """py-spy recording one process until stopped; its collapsed stacks, summarised."""

    def __init__(self, pid: int, path: Path) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.path = path
        self.process = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(path),
             "--rate", str(PROFILE_RATE), "--function", "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> dict[str, Any]:
        """Shares of the event loop's busy samples (the loop thread, not waiting in
        select): per function on top of the stack ("self") and anywhere on it
        ("inclusive", leaving out the frames under every sample: the loop itself)."""
        self.process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        self.process.wait(timeout=30)
        own: Counter[str] = Counter()
        anywhere: Counter[str] = Counter()
        busy = idle = other_threads = 0
        for line in self.path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = []
            for frame in stack.split(";"):
                name, _, where = frame.partition(" (")
                frames.append(f"{name} ({where.rsplit('/', 1)[-1]}" if where else name)
            samples = int(count)
            if not any(frame.startswith("BaseEventLoop.run_forever") for frame in frames):
                other_threads += samples  # aiosqlite's threads, the resolver's
                continue
            if frames[-1].startswith(("EpollSelector.select", "DefaultSelector.select")):
                idle += samples
                continue
            busy += samples
            own[frames[-1]] += samples
            for frame in set(frames):
                anywhere[frame] += samples

        def top(counter: Counter[str]) -> list[list[Any]]:
            return [
                [frame, round(n / max(1, busy), 3)]
                for frame, n in counter.most_common()
                if n < busy * 0.99
            ][:PROFILE_TOP]

        return {
            "loop_busy_samples": busy, "loop_idle_samples": idle,
            "other_thread_samples": other_threads, "rate_hz": PROFILE_RATE,
            "self": top(own), "inclusive": top(anywhere),
        }  # fmt: skip


# -- the load -----------------------------------------------------------------------------


@dataclass
class Outcome:
    status: int
    code: str = ""
    total_ms: float = 0.0
    first_chunk_ms: float | None = None
    tokens: int = 0  # prompt + completion, as the stream's usage chunk reported


@dataclass
class Phase:
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    sent: int = 0  # paced: all requests of the rounds, lead-ins included (for the CPU)
    lags_ms: list[float] = field(default_factory=list)  # paced: how late each send was

    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]


def tally(tokens: dict[str, int], agent_id: str, outcome: Outcome) -> None:
    tokens[agent_id] = tokens.get(agent_id, 0) + outcome.tokens


async def complete(
    http: aiohttp.ClientSession, *, url: str, credential: str, index: int,
    max_tokens: int | None = None,
) -> Outcome:  # fmt: skip
    """One streamed completion, read to its last byte; the times are from the send."""
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": messages(index),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    headers = {"Authorization": f"Bearer {credential}", "Content-Type": "application/json"}
    payload = json.dumps(body).encode()
    sent = time.monotonic()
    async with http.post(f"{url}/chat/completions", data=payload, headers=headers) as response:
        if response.status != 200:
            raw = await response.read()
            try:
                code = json.loads(raw)["error"]["code"] or ""
            except (ValueError, KeyError, TypeError):
                code = ""
            return Outcome(response.status, code, (time.monotonic() - sent) * 1000)
        outcome = Outcome(200)
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            if outcome.first_chunk_ms is None:
                event = json.loads(line[6:])
                choices = event.get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    outcome.first_chunk_ms = (time.monotonic() - sent) * 1000
            if b'"usage": {' in line or b'"usage":{' in line:
                outcome.tokens = int(json.loads(line[6:])["usage"]["total_tokens"])
        outcome.total_ms = (time.monotonic() - sent) * 1000
        return outcome


async def closed_round(
    http: aiohttp.ClientSession, *, url: str, credentials: dict[str, str],
    indices: range, phase: Phase, tokens: dict[str, int], cpu_pid: int | None = None,
) -> None:  # fmt: skip
    """Every agent sends its requests of `indices` one after another, all agents at once."""
    agents = list(credentials.items())

    async def agent(position: int) -> list[tuple[str, Outcome]]:
        agent_id, credential = agents[position]
        done = []
        for index in indices[position :: len(agents)]:
            done.append(
                (agent_id, await complete(http, url=url, credential=credential, index=index))
            )
        return done

    cpu_before = cpu_seconds(cpu_pid) if cpu_pid else 0.0
    started = time.monotonic()
    results = await asyncio.gather(*(agent(position) for position in range(len(agents))))
    phase.wall_s += time.monotonic() - started
    if cpu_pid:
        phase.cpu_s += cpu_seconds(cpu_pid) - cpu_before
    for agent_id, outcome in (pair for done in results for pair in done):
        phase.outcomes.append(outcome)
        tally(tokens, agent_id, outcome)


async def paced_round(
    http: aiohttp.ClientSession, *, url: str, credentials: dict[str, str], indices: range,
    lead_in: int, rate: float, phase: Phase, lead_phase: Phase, tokens: dict[str, int],
    cpu_pid: int | None = None,
) -> None:  # fmt: skip
    """An open loop: `lead_in` requests (counted in `lead_phase`), then those of
    `indices` (in `phase`); the n-th is sent n/rate s after the start, by agent
    index mod agents, whatever is still in flight."""
    agents = list(credentials.items())

    async def one(agent_id: str, credential: str, index: int) -> tuple[str, Outcome]:
        return agent_id, await complete(http, url=url, credential=credential, index=index)

    tasks = []
    cpu_before = cpu_seconds(cpu_pid) if cpu_pid else 0.0
    started = time.monotonic() + 0.005
    for number, index in enumerate(range(indices.start - lead_in, indices.stop)):
        due = started + number / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        phase.lags_ms.append(max(0.0, time.monotonic() - due) * 1000)
        agent_id, credential = agents[index % len(agents)]
        tasks.append(asyncio.create_task(one(agent_id, credential, index)))
    results = await asyncio.gather(*tasks)
    phase.wall_s += time.monotonic() - started
    phase.sent += len(results)
    if cpu_pid:
        phase.cpu_s += cpu_seconds(cpu_pid) - cpu_before
    for number, (agent_id, outcome) in enumerate(results):
        (lead_phase if number < lead_in else phase).outcomes.append(outcome)
        tally(tokens, agent_id, outcome)


async def exhaust_budget(
    http: aiohttp.ClientSession, *, url: str, credential: str
) -> dict[str, Any]:
    """Completions from one agent, BUDGET_CONCURRENCY at once, until the budget refuses
    with nothing else of the agent in flight (see the module's docstring)."""
    exhausted = asyncio.Event()
    counts: dict[str, Any] = {
        "admitted": 0, "reserved_retries": 0, "refused": 0, "admitted_after_refusal": 0,
        "agent_busy": 0, "other_errors": 0, "first_refusal_at_tokens": None,
    }  # fmt: skip
    sent = spent = in_flight = 0

    async def worker() -> None:
        nonlocal sent, spent, in_flight
        while not exhausted.is_set() and sent < BUDGET_MAX_SENDS:
            sent += 1
            in_flight += 1
            try:
                outcome = await complete(
                    http, url=url, credential=credential, index=sent,
                    max_tokens=BUDGET_ASKED_MAX_TOKENS,
                )  # fmt: skip
            finally:
                in_flight -= 1
            if outcome.status == 200:
                counts["admitted"] += 1
                if counts["first_refusal_at_tokens"] is not None:
                    counts["admitted_after_refusal"] += 1
                spent += outcome.tokens
            elif outcome.code == "budget_reserved":
                counts["reserved_retries"] += 1
                await asyncio.sleep(RETRY_SECONDS)
            elif outcome.code == "daily_budget_exhausted":
                counts["refused"] += 1
                if counts["first_refusal_at_tokens"] is None:
                    counts["first_refusal_at_tokens"] = spent
                if not in_flight:
                    exhausted.set()
                else:
                    await asyncio.sleep(RETRY_SECONDS)
            elif outcome.code == "agent_busy":
                counts["agent_busy"] += 1
                await asyncio.sleep(RETRY_SECONDS)
            else:
                counts["other_errors"] += 1
                await asyncio.sleep(RETRY_SECONDS)

    await asyncio.gather(*(worker() for _ in range(BUDGET_CONCURRENCY)))
    counts["spent"] = spent
    return counts


async def budget_variant(
    http: aiohttp.ClientSession, *, url: str, agents: list[tuple[str, str]],
    flush_seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """`exhaust_budget` for each of `agents` at once; counts summed, first refusals as
    [min, max] over the agents (their stored tokens are added once the gateway stopped)."""
    started = time.monotonic()
    runs = await asyncio.gather(
        *(exhaust_budget(http, url=url, credential=credential) for _, credential in agents)
    )
    firsts = [run["first_refusal_at_tokens"] for run in runs]
    known = [first for first in firsts if first is not None]
    summed = {
        key: sum(run[key] for run in runs)
        for key in ("admitted", "reserved_retries", "refused", "admitted_after_refusal",
                    "agent_busy", "other_errors")
    }  # fmt: skip
    return {
        "flush_seconds": flush_seconds,
        "agents": len(agents),
        **summed,
        "first_refusal_at_tokens": [min(known), max(known)] if known else None,
        "never_refused": len(firsts) - len(known),
        "seconds": round(time.monotonic() - started, 2),
        "reported": {
            agent_id: run["spent"] for (agent_id, _), run in zip(agents, runs, strict=True)
        },
    }


# -- the database -------------------------------------------------------------------------


async def seed(url: str, vault: Vault, agents: int, budgeted: int) -> tuple[list[str], list[str]]:
    """`agents` running agents on the platform's OpenAI key, then `budgeted` with a small
    budget; their ids and credentials, in that order."""
    await upgrade(url)
    database = Database(url)
    ids: list[str] = []
    credentials: list[str] = []
    try:
        async with database.session() as session:
            session.add(User(id=1, username="bench", first_name="Bench"))
            await session.flush()
            for number in range(agents + budgeted):
                credential = new_credential()
                agent = Agent(
                    owner_id=1, name=f"Bench {number}", bot_id=10_000 + number,
                    bot_username=f"bench_{number}_bot",
                    token_encrypted=vault.encrypt(f"{10_000 + number}:token"),
                    webhook_secret_encrypted=vault.encrypt("hook-secret"),
                    provider="openai", model="gpt-4o-mini", system_prompt="Be brief.",
                    gateway_key_hash=credential_hash(credential),
                    daily_token_budget=BUDGET if number >= agents else None,
                )  # fmt: skip
                session.add(agent)
                await session.flush()
                ids.append(agent.id)
                credentials.append(credential)
    finally:
        await database.close()
    return ids, credentials


async def stored_tokens(url: str) -> dict[str, int]:
    # Columns, not rows: `reading()` ends with a rollback, which expires loaded objects.
    query = select(AgentUsage.agent_id, AgentUsage.prompt_tokens + AgentUsage.completion_tokens)
    database = Database(url)
    try:
        async with database.reading() as session:
            rows = (await session.execute(query)).all()
    finally:
        await database.close()
    totals: dict[str, int] = {}
    for agent_id, tokens in rows:
        totals[agent_id] = totals.get(agent_id, 0) + tokens
    return totals


# -- the run ------------------------------------------------------------------------------


def latencies(phase: Phase, expected: int) -> dict[str, Any]:
    ok = phase.ok()
    if not ok:
        return {"errors": len(phase.outcomes)}
    totals = [o.total_ms for o in ok]
    firsts = [o.first_chunk_ms for o in ok if o.first_chunk_ms is not None]
    return {
        "p50_ms": round(statistics.median(totals), 2),
        "p99_ms": round(percentile(totals, 0.99), 2),
        "first_chunk_p50_ms": round(statistics.median(firsts), 2) if firsts else None,
        "first_chunk_p99_ms": round(percentile(firsts, 0.99), 2) if firsts else None,
        "errors": expected - len(ok),
    }


def difference(gateway: dict[str, Any], direct: dict[str, Any], key: str) -> float | None:
    if gateway.get(key) is None or direct.get(key) is None:
        return None
    return round(float(gateway[key]) - float(direct[key]), 2)


async def stop_gateway(gateway: Child) -> dict[str, Any]:
    """Ask the gateway to stop (it writes what it counted); how long that took, and its
    error if it did not stop cleanly (then some of its counts are not stored)."""
    started = time.monotonic()
    error = None
    try:
        await asyncio.wait_for(gateway.ask("stop"), 60)
    except Exception as failure:
        error = str(failure)[:300]
    gateway.kill()
    return {"stop_seconds": round(time.monotonic() - started, 2), "stop_error": error}


async def start_gateway(env: dict[str, str], vault_key: str) -> tuple[Child, str]:
    gateway = Child(_serve_gateway, env, vault_key)
    try:
        return gateway, await gateway.started()
    except BaseException:
        gateway.kill()
        raise


async def main(
    *, requests: int, agents: int, rate: float, paced_seconds: float, flush_seconds: float,
    short_flush_seconds: float, profile: Path | None,
) -> dict[str, Any]:  # fmt: skip
    paced_requests = max(PACED_ROUNDS, round(rate * paced_seconds))
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        database_url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        vault_key = generate_key()
        ids, keys = await seed(database_url, Vault([vault_key]), agents, 2 * BUDGET_AGENTS)
        credentials = dict(zip(ids[:agents], keys[:agents], strict=True))
        budget_agents = list(zip(ids[agents:], keys[agents:], strict=True))
        fake = Child(_serve_fake)
        gateway: Child | None = None
        profiler: Profiler | None = None
        profiled: dict[str, Any] | None = None
        try:
            fake_url = await fake.started()
            env = {
                "DATABASE_URL": database_url,
                "OPENAI_API_KEY": PLATFORM_KEY,
                "OPENAI_BASE_URL": fake_url,
                "GATEWAY_HOST": "127.0.0.1",
                "GATEWAY_PORT": "0",
                "GATEWAY_MAX_TOKENS": str(MAX_TOKENS),
                "GATEWAY_FLUSH_SECONDS": str(flush_seconds),
            }
            gateway, gateway_url = await start_gateway(env, vault_key)
            direct_credentials = {agent_id: PLATFORM_KEY for agent_id in credentials}
            sides = {
                "direct": (fake_url, direct_credentials, None),
                "gateway": (gateway_url, credentials, gateway.pid),
            }
            saturated = {"direct": Phase(), "gateway": Phase()}
            paced = {"direct": Phase(), "gateway": Phase()}
            lead_ins = {"direct": Phase(), "gateway": Phase()}
            lead_in = round(rate * LEAD_IN_SECONDS)
            tokens: dict[str, dict[str, int]] = {"direct": {}, "gateway": {}}
            budget: list[dict[str, Any]] = []
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=60)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                for side, (url, side_keys, _) in sides.items():  # first connections and reads
                    await closed_round(http, url=url, credentials=side_keys,
                                       indices=range(-agents, 0), phase=Phase(),
                                       tokens=tokens[side])  # fmt: skip
                await fake.ask("forget")

                bounds = [requests * part // ROUNDS for part in range(ROUNDS + 1)]
                for number in range(ROUNDS):
                    order = ["direct", "gateway"] if number % 2 == 0 else ["gateway", "direct"]
                    for side in order:
                        url, side_keys, pid = sides[side]
                        await closed_round(
                            http, url=url, credentials=side_keys, phase=saturated[side],
                            tokens=tokens[side], cpu_pid=pid,
                            indices=range(bounds[number], bounds[number + 1]),
                        )  # fmt: skip
                    await fake.ask("forget")

                if profile is not None:
                    profiler = Profiler(gateway.pid, profile)
                    await asyncio.sleep(0.5)  # attached
                bounds = [paced_requests * part // PACED_ROUNDS for part in range(PACED_ROUNDS + 1)]
                for number in range(PACED_ROUNDS):
                    order = ["direct", "gateway"] if number % 2 == 0 else ["gateway", "direct"]
                    for side in order:
                        url, side_keys, pid = sides[side]
                        await paced_round(
                            http, url=url, credentials=side_keys, rate=rate, phase=paced[side],
                            lead_in=lead_in, lead_phase=lead_ins[side], tokens=tokens[side],
                            cpu_pid=pid, indices=range(bounds[number], bounds[number + 1]),
                        )  # fmt: skip
                    await fake.ask("forget")
                if profiler is not None:
                    profiled = await asyncio.to_thread(profiler.stop)
                    profiler = None

                await fake.ask("reply", " ".join(["word"] * MAX_TOKENS))
                budget.append(await budget_variant(
                    http, url=gateway_url, agents=budget_agents[:BUDGET_AGENTS],
                    flush_seconds=flush_seconds,
                ))  # fmt: skip
                budget[-1].update(await stop_gateway(gateway))

                env["GATEWAY_FLUSH_SECONDS"] = str(short_flush_seconds)
                gateway, short_url = await start_gateway(env, vault_key)
                budget.append(await budget_variant(
                    http, url=short_url, agents=budget_agents[BUDGET_AGENTS:],
                    flush_seconds=short_flush_seconds,
                ))  # fmt: skip
                budget[-1].update(await stop_gateway(gateway))
                max_tokens_asked = await fake.ask("max_tokens_asked")
            stored = await stored_tokens(database_url)
        finally:
            if profiler is not None:
                profiler.process.kill()
            if gateway is not None:
                gateway.kill()
            fake.kill()

    direct = {
        **latencies(paced["direct"], paced_requests),
        "requests_per_s": round(len(saturated["direct"].ok()) / saturated["direct"].wall_s, 1),
        "lead_in": latencies(lead_ins["direct"], lead_in * PACED_ROUNDS),
        "saturated": latencies(saturated["direct"], requests),
    }
    through = {
        **latencies(paced["gateway"], paced_requests),
        "requests_per_s": round(len(saturated["gateway"].ok()) / saturated["gateway"].wall_s, 1),
        "cpu_ms_per_request": round(paced["gateway"].cpu_s * 1000 / paced["gateway"].sent, 3),
        "cpu_share": round(paced["gateway"].cpu_s / paced["gateway"].wall_s, 2),
        "lead_in": latencies(lead_ins["gateway"], lead_in * PACED_ROUNDS),
        "saturated": {
            **latencies(saturated["gateway"], requests),
            "cpu_ms_per_request": round(saturated["gateway"].cpu_s * 1000 / requests, 3),
        },
    }
    mismatch = sum(
        abs(stored.get(agent_id, 0) - tokens["gateway"].get(agent_id, 0))
        for agent_id in credentials
    )
    for variant in budget:
        reported = variant.pop("reported")
        stored_by_agent = [stored.get(agent_id, 0) for agent_id in reported]
        variant["stored_tokens"] = [min(stored_by_agent), max(stored_by_agent)]
        variant["reported_tokens"] = [min(reported.values()), max(reported.values())]
        variant["unstored_tokens"] = sum(
            abs(stored.get(agent_id, 0) - tokens) for agent_id, tokens in reported.items()
        )
        most = max(max(stored_by_agent), max(reported.values()))
        variant["overrun_tokens"] = max(0, most - BUDGET)
    lags = paced["direct"].lags_ms + paced["gateway"].lags_ms
    result: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "concurrency": agents,
        "rate": rate,
        "paced_requests": paced_requests,
        "requests": requests,
        "direct": direct,
        "gateway": through,
        "added_p50_ms": difference(through, direct, "p50_ms"),
        "added_p99_ms": difference(through, direct, "p99_ms"),
        "stream_first_chunk_added_ms": difference(through, direct, "first_chunk_p50_ms"),
        "stream_first_chunk_added_percentile": "p50",
        "stream_first_chunk_added_p99_ms": difference(through, direct, "first_chunk_p99_ms"),
        "lead_in_added_p99_ms": difference(through["lead_in"], direct["lead_in"], "p99_ms"),
        "send_lag_p99_ms": round(percentile(lags, 0.99), 2),
        "usage_mismatch_tokens": mismatch,
        "max_tokens_per_request": max_tokens_asked,
        "budget_overrun_tokens": max(variant["overrun_tokens"] for variant in budget),
        "budget": {"daily_budget": BUDGET, "max_tokens": MAX_TOKENS, "variants": budget},
    }
    if profiled is not None:
        result["profile"] = profiled
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300.0, help="paced completions/s")
    parser.add_argument("--paced-seconds", type=float, default=15.0, help="per side")
    parser.add_argument("--requests", type=int, default=2000, help="saturated, per side")
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--flush-seconds", type=float, default=1.0)
    parser.add_argument("--short-flush-seconds", type=float, default=0.05)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output (raw)")
    arguments = parser.parse_args()
    result = main(
        requests=arguments.requests, agents=arguments.agents, rate=arguments.rate,
        paced_seconds=arguments.paced_seconds, flush_seconds=arguments.flush_seconds,
        short_flush_seconds=arguments.short_flush_seconds, profile=arguments.profile,
    )  # fmt: skip
    print(json.dumps(asyncio.run(result)))
