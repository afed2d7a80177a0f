"""Desired state always wins: every user action, with one fault at each call it makes.

Prints one JSON object:
{"cases", "converged", "secrets_lost", "duplicates", "users_told", "max_converge_s",
 "operations_open", "stale_webhooks", "not_converged": {case: [why]}, "not_told": {case: error},
 "by_operation": {op: {"cases", "converged"}}, "by_fault": {fault: {"cases", "converged"}}}

How a case runs, through the real Deployer and Reconciler against the HTTP fakes
(FakeKubernetes, FakeTelegram), with a fresh SQLite database and an empty cluster:
set up the precondition (a running agent for stop, a stopped one for resume, two
revisions for revert, ...), inject ONE fault, run the operation, clear the faults,
run one `Reconciler.reconcile()` (plus `repair_webhook` for a running agent after a
Telegram fault: what the health sweep does), then compare what exists with the row.

- The faults: Kubernetes 500, 409 and a time-out (a delay longer than the client's read
  timeout; in FakeKubernetes a bodiless request such as DELETE still lands late, a PATCH
  is lost: its body is read after the delay) on each distinct (verb, resource) the operation
  makes, and Telegram 429 and 502 on each Bot API method it calls with the agent's token.
  Both lists are found by running each operation once without a fault (those clean runs
  are cases too, named `<op>/clean`).
- converged: the Deployment has 1 replica if the row says running, 0 if stopped; no
  labelled object at all if deleted (or rolled back, or never stored); every object of a
  kept agent exists; the pod template's config hash is that of the row's spec; the
  Secret's BOT_TOKEN is the row's token; a running agent's bot has its webhook on us.
- secrets_lost: the row's token does not decrypt, or is not the last one handed over.
- duplicates: more than one live row for the bot, or more than one Deployment. No chat
  messages are sent here (the chat layer is not in the loop), so double messages are
  not counted.
- users_told: the operation returned, or raised a HatchbotError (a handler words it).
- operations_open: an `operations` row still running after the operation returned.
- stale_webhooks: a deleted (or rolled-back) agent's bot still points its webhook at us;
  reported, not part of `converged` (nothing in the desired state says so yet).
- max_converge_s: the longest reconcile (+ repair) of any case; for a kill case, the time
  from the second manager's start until the case converged (so it includes a start-up).

The manager SIGKILLed between steps (`--kills`, on by default; `--no-kills` skips them,
about a minute): the real `python -m manager_bot` on the local backend, as in
tests/e2e/test_kill_mid_deploy.py, one fresh data directory per case, the fake Telegram
and OpenAI shared. The user's action is held at one step by a slow Bot API call, the
process is SIGKILLed there and a second one started on the same directory. Cases
`<op>/kill@<step>` (fault "kill"): a deploy before the agent is stored (the manager's
getMe of the agent token: expected "interrupted", nothing stored), after it is stored
(the first progress edit), at the webhook step (deleteWebhook: local agents poll) and
while waiting for readiness (the runtime's getMe, once the progress shows the webhook
set); a delete of a running agent at its deleteWebhook. A Stop has no case: on the
local backend it makes no Telegram call to hold it at. A held call of the killed manager
fails after the hold (a dead client's request does not land seconds later, over what
the second manager did); the runtime's held getMe answers (the runtime lives on).
- converged (polled for up to KILL_CONVERGE_LIMIT s): the operation is finished and the
  agent's row is what it implies (a finished deploy: running; a rolled-back or
  interrupted one: no live row; a delete: deleted); a running row has exactly one live
  runtime process (pid in agents/<id>/state.json, or a process working in that
  directory) that answers a message through the fakes; no other row has a process or an
  agents/<id> directory; no message is left at "Deploying…".
- users_told: the chat shows the outcome (the progress message edited, or a message).
- duplicates: more than one outcome message, two live rows or two runtime processes.
- secrets_lost: a stored token of the bot does not decrypt with data/fernet.key, or is
  not the one pasted.
- "kills": each kill case's result (live | interrupted | rolled back | deleted) and time.
Every process a case started (both managers, and the agent runtimes they spawned, which
outlive them on purpose) is SIGKILLed when the case ends, whatever happened.
Not covered: a second fault during a rollback (faults go only on calls a clean run makes).
Usage: python bench/faults.py [--only deploy stop ...] [--no-kills]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client, config  # noqa: E402

from manager_bot import texts  # noqa: E402
from manager_bot.app import installation_id  # noqa: E402
from manager_bot.backends.base import object_name  # noqa: E402
from manager_bot.backends.kubernetes import KubernetesBackend  # noqa: E402
from manager_bot.backends.manifests import CONFIG_HASH, ClusterConfig, config_hash  # noqa: E402
from manager_bot.config import ManagerSettings  # noqa: E402
from manager_bot.crypto import Vault, generate_key  # noqa: E402
from manager_bot.db.migrate import upgrade  # noqa: E402
from manager_bot.db.models import Agent, DesiredState  # noqa: E402
from manager_bot.db.repositories import ACTIVE, Repositories  # noqa: E402
from manager_bot.db.session import Database  # noqa: E402
from manager_bot.services.deployer import Deployer, DeployerConfig, NewAgent  # noqa: E402
from manager_bot.services.errors import HatchbotError  # noqa: E402
from manager_bot.services.providers import available_providers  # noqa: E402
from manager_bot.services.reconciler import Reconciler  # noqa: E402
from manager_bot.services.telegram import AgentTelegram  # noqa: E402
from runtime.settings_loading import load_settings  # noqa: E402
from tests.e2e.conftest import polling, start_manager_process  # noqa: E402
from tests.fakes.kubelet_env import secret_strings  # noqa: E402
from tests.fakes.kubernetes_api import FakeKubernetes  # noqa: E402
from tests.fakes.loopback import free_port  # noqa: E402
from tests.fakes.openai_api import FakeOpenAI  # noqa: E402
from tests.fakes.telegram_api import FakeBot, FakeTelegram, make_token  # noqa: E402
from tests.fakes.user import SimUser  # noqa: E402
from tests.fakes.waiting import wait_until  # noqa: E402

PUBLIC_URL = "https://bots.example.com"
NAMESPACE = "agents"
LABELLED = "app.kubernetes.io/managed-by=hatchbot"
KINDS = ("secrets", "deployments", "services", "networkpolicies", "virtualservices")
OWNER, ADMIN = 1001, 1
READ_TIMEOUT = 1.0  # the backend's (connect, read) time-out, as test_deployer's kube_world
LATE = 2.0  # a time-out fault: the server answers (and writes) after this many seconds
KUBE_FAULTS = ("500", "409", "timeout")
TELEGRAM_FAULTS = ("429", "502")


@dataclass
class Scene:
    """One case's world: a fresh database over the shared fakes, and the agent's bot."""

    deployer: Deployer
    database: Database
    vault: Vault
    bots: dict[str, FakeBot]  # every token the agent's bot had, to its fake bot
    token: str  # the last token handed to the deployer
    agent_id: str | None = None

    @property
    def bot(self) -> FakeBot:
        return self.bots[self.token]


@dataclass(frozen=True)
class Fault:
    """One injected fault: `where` is a (verb, resource) or a Bot API method."""

    kind: str
    where: str

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.where}"


@dataclass
class Outcome:
    name: str
    operation: str
    fault: str
    told: bool
    error: str | None
    reasons: list[str] = field(default_factory=list)
    secret_lost: bool = False
    duplicate: bool = False
    operation_open: bool = False
    stale_webhook: bool = False
    converge_s: float = 0.0
    result: str | None = None  # kill cases: live | interrupted | rolled back | deleted


Step = Callable[[Scene], Awaitable[Any]]


@dataclass(frozen=True)
class Operation:
    prepare: Step
    act: Step


class Bench:
    """The shared fakes and backend; a fresh database and an empty cluster per case."""

    def __init__(
        self, *, kube: FakeKubernetes, telegram: FakeTelegram, scratch: Path, template: Path
    ) -> None:
        self.kube, self.telegram = kube, telegram
        self._scratch, self._template = scratch, template
        self._cases = 0
        configuration = client.Configuration()
        kubeconfig = kube.write_kubeconfig(scratch / "kubeconfig")
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
        self.backend = KubernetesBackend(
            api_client=client.ApiClient(configuration),
            cluster=ClusterConfig(
                namespace=NAMESPACE, image="hatchbot:bench", router="istio",
                public_url=PUBLIC_URL,
            ),
            request_timeout=(1, READ_TIMEOUT),
        )  # fmt: skip
        self.agent_telegram = AgentTelegram(api_url=telegram.url)
        self.settings = load_settings(
            ManagerSettings,
            {
                "MANAGER_BOT_TOKEN": "1:x",
                "TELEGRAM_API_URL": telegram.url,
                "OPENAI_API_KEY": "sk-platformkeyplatformkey00",
                "OPENAI_BASE_URL": "http://llm.invalid/v1",
            },
        )

    async def close(self) -> None:
        await self.agent_telegram.close()
        await self.backend.close()

    async def scene(self) -> Scene:
        self._cases += 1
        self._empty_cluster()
        path = self._scratch / f"case{self._cases}.db"
        shutil.copyfile(self._template, path)
        database, vault = Database(f"sqlite+aiosqlite:///{path}"), Vault([generate_key()])
        deployer = Deployer(
            database=database, vault=vault, backend=self.backend, telegram=self.agent_telegram,
            providers=available_providers(self.settings),
            config=DeployerConfig(
                mode="webhook", public_url=PUBLIC_URL, telegram_api_url=self.telegram.url,
                max_agents_per_user=10, gateway_url="http://gateway.invalid/v1",
                installation_id=await installation_id(database), ready_timeout=10,
                ready_poll_interval=0.05, deploys_per_window=100,
            ),
        )  # fmt: skip
        async with database.session() as session:
            await Repositories(session).users.upsert(user_id=OWNER, username=None, first_name="U")
        bot = self.telegram.add_bot(username=f"case{self._cases}_bot", first_name="Helper")
        return Scene(deployer, database, vault, {bot.token: bot}, bot.token)

    def _empty_cluster(self) -> None:
        for kind in KINDS:
            for obj in self.kube.objects(kind, NAMESPACE, LABELLED):
                self.kube.delete_object(kind, NAMESPACE, obj["metadata"]["name"])
        self.kube.clear_faults()

    def clear_faults(self) -> None:
        self.kube.clear_faults()
        # FakeTelegram has no public way to drop a fault that was never hit.
        self.telegram._faults.clear()

    def inject(self, fault: Fault, scene: Scene) -> None:
        if fault.kind in KUBE_FAULTS:
            verb, resource = fault.where.split(" ")
            status = None if fault.kind == "timeout" else int(fault.kind)
            delay = LATE if fault.kind == "timeout" else 0.0
            self.kube.inject_fault(verb=verb, resource=resource, status=status, delay=delay)
        else:
            self.telegram.inject_fault(
                fault.where, status=int(fault.kind), retry_after=1, bot=scene.bot
            )

    async def run(self, name: str, operation: Operation, fault: Fault | None) -> Outcome:
        scene = await self.scene()
        try:
            await operation.prepare(scene)
            if fault is not None:
                self.inject(fault, scene)
            error: BaseException | None = None
            try:
                await operation.act(scene)
            except Exception as raised:  # recorded: what escapes decides "told"
                error = raised
            if fault is not None and fault.kind == "timeout":
                # The timed-out request is still being served; let its late write land
                # before reconcile, so the result does not depend on a race.
                await asyncio.sleep(LATE - READ_TIMEOUT + 0.3)
            self.clear_faults()
            outcome = Outcome(
                name=name, operation=name.split("/")[0], fault=fault.kind if fault else "clean",
                told=error is None or isinstance(error, HatchbotError),
                error=None if error is None else f"{type(error).__name__}: {error}",
            )  # fmt: skip
            await self.converge(scene, outcome, webhook=fault is not None and fault.kind
                                in TELEGRAM_FAULTS)  # fmt: skip
            await self.check(scene, outcome)
            return outcome
        finally:
            await scene.database.close()

    async def converge(self, scene: Scene, outcome: Outcome, *, webhook: bool) -> None:
        reconciler = Reconciler(
            database=scene.database, backend=self.backend, deployer=scene.deployer
        )
        started = time.perf_counter()
        try:
            report = await reconciler.reconcile()
            if report.failed:
                outcome.reasons.append(f"reconcile failed for {list(report.failed)}")
            row = await self.row(scene)
            if webhook and row is not None and row.desired_state == DesiredState.RUNNING:
                await reconciler.repair_webhook(row.id)
        except Exception as error:
            outcome.reasons.append(f"reconcile/repair raised {type(error).__name__}: {error}")
        outcome.converge_s = time.perf_counter() - started

    async def row(self, scene: Scene) -> Agent | None:
        """The case's agent: the one it made (a deploy stores at most one)."""
        async with scene.database.session() as session:
            rows = list(await Repositories(session).agents.all())
        if scene.agent_id is None and rows:
            scene.agent_id = rows[-1].id
        return next((row for row in rows if row.id == scene.agent_id), None)

    async def check(self, scene: Scene, outcome: Outcome) -> None:
        row = await self.row(scene)
        reasons = outcome.reasons
        async with scene.database.session() as session:
            repos = Repositories(session)
            rows = list(await repos.agents.all())
            outcome.operation_open = bool(await repos.operations.unfinished())
        live = [r for r in rows if r.bot_id == scene.bot.id and r.desired_state in ACTIVE]
        deployments = self.kube.objects("deployments", NAMESPACE, LABELLED)
        outcome.duplicate = len(live) > 1 or len(deployments) > 1
        if row is not None:
            try:
                outcome.secret_lost = scene.vault.decrypt(row.token_encrypted) != scene.token
            except Exception:
                outcome.secret_lost = True
        kept = row is not None and row.desired_state in ACTIVE
        if not kept:
            left = [kind for kind in KINDS if self.kube.objects(kind, NAMESPACE, LABELLED)]
            if left:
                reasons.append(f"objects left after delete/rollback: {left}")
            webhook = next((b.webhook for b in scene.bots.values() if b.webhook), None)
            outcome.stale_webhook = webhook is not None and webhook.url.startswith(PUBLIC_URL)
            return
        assert row is not None
        name = object_name(row.id)
        missing = [kind for kind in KINDS if self.kube.get_object(kind, NAMESPACE, name) is None]
        if missing:
            reasons.append(f"missing objects: {missing}")
        spec = scene.deployer.spec_for(row)
        deployment = self.kube.get_object("deployments", NAMESPACE, name)
        if deployment is not None:
            want = 1 if spec.running else 0
            replicas = deployment["spec"].get("replicas")
            if replicas != want:
                reasons.append(f"{replicas} replicas, row says {row.desired_state}")
            template = deployment["spec"]["template"]["metadata"].get("annotations", {})
            if template.get(CONFIG_HASH) != config_hash(spec):
                reasons.append(f"config hash of revision {row.revision} not rolled out")
        secret = self.kube.get_object("secrets", NAMESPACE, name)
        token = spec.secrets.bot_token.get_secret_value()
        if secret is not None and secret_strings(secret).get("BOT_TOKEN") != token:
            reasons.append("Secret's BOT_TOKEN is not the row's token")
        if spec.running:
            bot = scene.bots.get(spec.secrets.bot_token.get_secret_value())
            url = bot.webhook.url if bot is not None and bot.webhook else None
            if url != f"{PUBLIC_URL}/webhook/{row.id}":
                reasons.append(f"webhook is {url!r}")


# -- operations: (precondition, action) -------------------------------------------------


def new_agent(scene: Scene) -> NewAgent:
    return NewAgent(
        owner_id=OWNER, bot_token=scene.token, provider="openai", model="gpt-4o-mini",
        system_prompt="You are Helper.",
    )  # fmt: skip


async def nothing(scene: Scene) -> None:
    return None


async def deploy(scene: Scene) -> None:
    agent = await scene.deployer.deploy(new_agent(scene))
    scene.agent_id = agent.id


async def deployed(scene: Scene) -> None:
    await deploy(scene)


async def stopped(scene: Scene) -> None:
    await deploy(scene)
    assert scene.agent_id is not None
    await scene.deployer.stop(owner_id=OWNER, agent_id=scene.agent_id)


async def edited(scene: Scene) -> None:
    await deploy(scene)
    assert scene.agent_id is not None
    await scene.deployer.change(
        owner_id=OWNER, agent_id=scene.agent_id, system_prompt="You are Helper, v2."
    )


def with_new_token(telegram: FakeTelegram) -> Step:
    async def prepare(scene: Scene) -> None:
        """Deployed; then Telegram issues a new token for the same bot, revoking the old."""
        await deploy(scene)
        old = scene.bot
        new = telegram.add_bot(username=old.username, first_name=old.first_name,
                               token=make_token(old.id))  # fmt: skip
        telegram.revoke(old.token)
        scene.bots[new.token] = new
        scene.token = new.token  # handed over now: whatever happens, this is the token

    return prepare


def action(name: str) -> Step:
    async def act(scene: Scene) -> Any:
        deployer, agent_id = scene.deployer, scene.agent_id or ""
        if name == "stop":
            return await deployer.stop(owner_id=OWNER, agent_id=agent_id)
        if name == "resume":
            return await deployer.resume(owner_id=OWNER, agent_id=agent_id)
        if name == "edit":
            return await deployer.change(
                owner_id=OWNER, agent_id=agent_id, system_prompt="You are Helper, edited."
            )
        if name == "revert":
            return await deployer.revert(owner_id=OWNER, agent_id=agent_id)
        if name == "rotate":
            return await deployer.rotate_token(
                owner_id=OWNER, agent_id=agent_id, new_token=scene.token
            )
        if name == "delete":
            return await deployer.delete(owner_id=OWNER, agent_id=agent_id)
        if name == "ban":
            return await deployer.stop_all_of(OWNER, actor_id=ADMIN)
        raise ValueError(name)

    return act


def operations(telegram: FakeTelegram) -> dict[str, Operation]:
    return {
        "deploy": Operation(nothing, deploy),
        "stop": Operation(deployed, action("stop")),
        "resume": Operation(stopped, action("resume")),
        "edit": Operation(deployed, action("edit")),
        "revert": Operation(edited, action("revert")),
        "rotate": Operation(with_new_token(telegram), action("rotate")),
        "delete": Operation(deployed, action("delete")),
        "ban": Operation(deployed, action("ban")),
    }


async def discover(bench: Bench, name: str, operation: Operation) -> tuple[Outcome, list[Fault]]:
    """Run the operation without a fault; the calls it made are where faults go."""
    scene = await bench.scene()
    try:
        await operation.prepare(scene)
        bench.kube.clear_requests()
        before = len(bench.telegram.calls())
        await operation.act(scene)
        pairs = sorted(
            {f"{r.verb} {r.resource}" for r in bench.kube.requests if r.namespace == NAMESPACE}
        )
        methods = sorted({c.method for c in bench.telegram.calls()[before:] if c.bot is scene.bot})
    finally:
        await scene.database.close()
    clean = await bench.run(f"{name}/clean", operation, None)
    faults = [Fault(kind, pair) for pair in pairs for kind in KUBE_FAULTS]
    faults += [Fault(kind, method) for method in methods for kind in TELEGRAM_FAULTS]
    return clean, faults


# -- a manager SIGKILLed between steps (--kills) ------------------------------------------
#
# The real `python -m manager_bot` (local backend) against the same fakes as
# tests/e2e/test_kill_mid_deploy.py: the user's action is held at one step by a slow
# Bot API call, the process is SIGKILLed there, a second process starts on the same data
# directory, and the bench watches the chat, the database and the agent processes until
# they agree (or KILL_CONVERGE_LIMIT passes).

MANAGER_HOLD = 3.0  # a held call of the killed manager: then it fails, it never lands late
RUNTIME_HOLD = 4.0  # a held call of the agent's runtime (it outlives the kill): then it answers
KILL_CONVERGE_LIMIT = 20.0  # seconds from the second start to a converged case
KILL_CASE_LIMIT = 60.0  # the whole case, set-up included
DEPLOYING = "Deploying"


@dataclass(frozen=True)
class Kill:
    """Where the manager dies: while `whose` bot's `method` call is held (after `skip` such
    calls went through), during `operation`; `expect` is what the user should end up with."""

    operation: str  # deploy | delete
    step: str
    method: str
    whose: str  # manager | agent
    expect: str  # live | interrupted | deleted
    skip: int = 0
    survivor: bool = False  # the held call is the runtime's: it answers after the hold
    shown: str | None = None  # killed only once the chat shows this too (the step is past)

    @property
    def name(self) -> str:
        return f"{self.operation}/kill@{self.step}"


KILLS = (
    # The deploy asks getMe of the agent's token before it stores the agent.
    Kill("deploy", "before the agent is stored", "getMe", "agent", "interrupted"),
    Kill("deploy", "after the agent is stored", "editMessageText", "manager", "live"),
    Kill("deploy", "at the webhook step", "deleteWebhook", "agent", "live"),  # local: polls
    # The manager's getMe goes through; the runtime's (its readiness) is held, and the
    # kill waits until the progress shows the webhook step done: the manager is then
    # waiting for readiness, not still at the webhook.
    Kill(
        "deploy",
        "while waiting for readiness",
        "getMe",
        "agent",
        "live",
        skip=1,
        survivor=True,
        shown=f"✅ {texts.STEP_LABELS['webhook']}",
    ),
    # Stored as deleted first, then the webhook is cleared, then the process removed.
    # (No Stop case: a local stop makes no Telegram call to hold it at; it is one step.)
    Kill("delete", "at the webhook step", "deleteWebhook", "agent", "deleted"),
)


def _cwd_under(pid: int, root: Path) -> bool:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return cwd == str(root) or cwd.startswith(f"{root}/")


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def processes_under(root: Path) -> list[int]:
    """Every live process working in `root`: the managers (their cwd) and their agents
    (agents/<id>/, even once that directory is removed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _running(int(entry.name)) and _cwd_under(int(entry.name), root):
            found.append(int(entry.name))
    return found


def agent_processes(data: Path) -> dict[str, list[int]]:
    """Agent id -> live runtime processes, from state.json and from /proc (a process whose
    state.json is gone or stale counts too)."""
    agents_dir = (data / "agents").absolute()
    found: dict[str, set[int]] = {}
    for state in agents_dir.glob("*/state.json"):
        with contextlib.suppress(OSError, ValueError):
            pid = json.loads(state.read_text()).get("pid")
            if pid and _running(pid) and _cwd_under(pid, state.parent):
                found.setdefault(state.parent.name, set()).add(pid)
    for pid in processes_under(agents_dir):
        with contextlib.suppress(OSError):
            name = Path(os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")).name
            found.setdefault(name, set()).add(pid)
    return {agent_id: sorted(pids) for agent_id, pids in found.items()}


def kill_everything_under(root: Path, managers: list[asyncio.subprocess.Process]) -> None:
    """SIGKILL this case's managers (by their process) and every agent they started (by
    the pids in state.json and by working directory): agents outlive their manager."""
    for process in managers:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    for _ in range(3):  # a manager killed mid-spawn may leave a process a moment later
        pids = {pid for pids in agent_processes(root / "data").values() for pid in pids}
        pids |= set(processes_under(root))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not pids:
            return
        time.sleep(0.2)


@dataclass
class Stored:
    """What the second manager's database says about the case's bot."""

    rows: list[tuple[str, str, str]]  # (id, desired_state, token_encrypted), oldest first
    operation: str | None  # the status of the case's operation (the newest of its kind)
    open_operations: int


def read_database(data: Path, *, bot_id: int, kind: str) -> Stored:
    connection = sqlite3.connect(data / "hatchbot.db", timeout=5)
    try:
        connection.execute("PRAGMA query_only=ON")
        rows = connection.execute(
            "SELECT id, desired_state, token_encrypted FROM agents WHERE bot_id = ? "
            "ORDER BY rowid", (bot_id,),
        ).fetchall()  # fmt: skip
        operation = connection.execute(
            "SELECT status FROM operations WHERE kind = ? ORDER BY id DESC LIMIT 1", (kind,)
        ).fetchone()
        (open_operations,) = connection.execute(
            "SELECT count(*) FROM operations WHERE status = 'running'"
        ).fetchone()
    finally:
        connection.close()
    return Stored([tuple(row) for row in rows], operation[0] if operation else None,
                  int(open_operations))  # fmt: skip


class KillBench:
    """The real manager process, killed at one step per case; fakes shared by all cases."""

    def __init__(self, *, telegram: FakeTelegram, openai: FakeOpenAI, scratch: Path) -> None:
        self.telegram, self.openai, self.scratch = telegram, openai, scratch
        self._cases = 0

    async def run(self, kill: Kill) -> Outcome:
        self._cases += 1
        root = self.scratch / f"kill{self._cases}"
        root.mkdir()
        outcome = Outcome(name=kill.name, operation=kill.operation, fault="kill", told=False,
                          error=None)  # fmt: skip
        managers: list[asyncio.subprocess.Process] = []
        stage = ["set-up"]
        try:
            await asyncio.wait_for(self._case(kill, root, outcome, managers, stage),
                                   KILL_CASE_LIMIT)  # fmt: skip
        except TimeoutError:
            outcome.reasons.append(f"case over {KILL_CASE_LIMIT:.0f} s, at: {stage[0]}")
            outcome.error = outcome.error or outcome.reasons[-1]
        except Exception as error:  # the case's own set-up failed: a finding, not a crash
            outcome.reasons.append(f"{stage[0]}: {type(error).__name__}: {error}"[:300])
            outcome.error = outcome.error or outcome.reasons[-1]
        finally:
            kill_everything_under(root, managers)
            for process in managers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(process.wait(), 5)
            self.telegram._faults.clear()
        if outcome.reasons and (root / "manager-output.log").exists():
            errors = [
                line.strip()[:200]
                for line in (root / "manager-output.log").read_text(errors="replace").splitlines()
                if "ERROR" in line or "Traceback" in line
            ]
            if errors:
                outcome.reasons.append(f"manager log: {errors[-1]}")
        return outcome

    async def _case(
        self, kill: Kill, root: Path, outcome: Outcome,
        managers: list[asyncio.subprocess.Process], stage: list[str],
    ) -> None:  # fmt: skip
        telegram, n = self.telegram, self._cases
        manager = telegram.add_bot(username=f"hatchbot{n}_bot")
        agent_bot = telegram.add_bot(username=f"phoenix{n}_bot", first_name="Phoenix")
        env = {
            "OPENAI_API_KEY": "sk-platformkeyplatformkey00", "OPENAI_BASE_URL": self.openai.url,
            "METRICS_PORT": "0", "GATEWAY_PORT": str(free_port()),
        }  # fmt: skip
        managers.append(await start_manager_process(telegram, manager, root, **env))
        user = telegram.user(manager)
        stage[0] = "first start"
        await wait_until(lambda: polling(telegram, manager), timeout=30)
        stage[0] = "wizard"
        await user.send("/deploy")
        await user.press("I already have a bot")
        await user.wait_for(text_contains="Paste")
        await user.send(agent_bot.token)
        await user.press("OpenAI · gpt-4o-mini")
        await user.wait_for(text_contains="Last step")
        await user.send("You rise again.")
        await user.wait_for(text_contains="Ready to deploy")
        if kill.operation == "delete":
            stage[0] = "deploy before the delete"
            await user.press("Deploy")
            await user.wait_for(text_contains=f"@{agent_bot.username} is live", timeout=30)
            await user.send(f"/delete {agent_bot.username}")
            await user.wait_for(text_contains=f"Delete @{agent_bot.username}?")
        before = {m["message_id"]: m.get("text") for m in user.messages()}

        held = manager if kill.whose == "manager" else agent_bot
        if kill.skip:
            telegram.inject_fault(kill.method, status=None, times=kill.skip, bot=held)
        hold = RUNTIME_HOLD if kill.survivor else MANAGER_HOLD
        telegram.inject_fault(kill.method, status=None if kill.survivor else 502, delay=hold,
                              bot=held)  # fmt: skip
        calls_before = len(telegram.calls(kill.method, bot=held))
        stage[0] = f"{kill.operation} up to the held {kill.method}"
        await user.press("Yes, delete" if kill.operation == "delete" else "Deploy")

        async def is_held() -> bool:
            if len(telegram.calls(kill.method, bot=held)) <= calls_before + kill.skip:
                return False
            return kill.shown is None or any(
                kill.shown in str(m.get("text") or "") for m in user.messages()
            )

        await wait_until(is_held, timeout=15)
        managers[0].send_signal(signal.SIGKILL)  # no goodbye: a crash mid-step
        await managers[0].wait()

        stage[0] = "second start"
        started = time.perf_counter()
        managers.append(await start_manager_process(telegram, manager, root, **env))
        deadline = started + KILL_CONVERGE_LIMIT
        while True:
            reasons, told, texts_seen = self._look(kill, root, user, agent_bot, before)
            if not reasons and told:
                outcome.converge_s = time.perf_counter() - started
                break
            if time.perf_counter() > deadline or managers[-1].returncode is not None:
                outcome.converge_s = time.perf_counter() - started
                if managers[-1].returncode is not None:
                    reasons.append(f"second manager exited with {managers[-1].returncode}")
                break
            await asyncio.sleep(0.2)
        stage[0] = "the agent answering"
        stored = read_database(root / "data", bot_id=agent_bot.id, kind=kill.operation)
        if not reasons and stored.rows and stored.rows[-1][1] == DesiredState.RUNNING:
            friend = telegram.user(agent_bot)
            await friend.send("are you there?")
            try:
                await friend.wait_for(text_contains="echo: are you there?", timeout=10)
            except AssertionError:
                reasons.append("the live agent does not answer")
        # A held call of the killed manager may not land (it fails after the hold), but
        # wait it out anyway, then look once more: nothing may change after convergence.
        await asyncio.sleep(max(0.0, started + hold - time.perf_counter()))
        if not reasons:
            reasons, told, texts_seen = self._look(kill, root, user, agent_bot, before)
        stage[0] = "the final look"
        managers[-1].kill()
        await managers[-1].wait()
        stored = read_database(root / "data", bot_id=agent_bot.id, kind=kill.operation)
        vault = Vault([(root / "data" / "fernet.key").read_text().strip()])
        for _, _, token in stored.rows:
            try:
                outcome.secret_lost |= vault.decrypt(token) != agent_bot.token
            except Exception:
                outcome.secret_lost = True
        outcomes = [t for t in texts_seen if _outcome_phrase(t, agent_bot.username)]
        live_rows = [row for row in stored.rows if row[1] in ACTIVE]
        runtimes = agent_processes(root / "data")
        outcome.duplicate = (
            len(outcomes) > 1 or len(live_rows) > 1
            or sum(len(pids) for pids in runtimes.values()) > 1
        )  # fmt: skip
        outcome.operation_open = stored.open_operations > 0
        outcome.told = told
        if not told:
            outcome.error = f"the chat shows: {[t[:80] for t in texts_seen]}"
        outcome.reasons.extend(reasons)
        outcome.result = _result(stored, kill.operation)
        if outcome.result != kill.expect and not reasons:
            outcome.reasons.append(f"converged, but {outcome.result}; expected {kill.expect}")

    def _look(
        self, kill: Kill, root: Path, user: SimUser, agent_bot: FakeBot, before: dict[int, Any]
    ) -> tuple[list[str], bool, list[str]]:
        """(why not converged, whether the chat shows the outcome, the new or changed texts)."""
        data = root / "data"
        texts_seen = [
            str(m.get("text") or "") for m in user.messages()
            if before.get(m["message_id"]) != m.get("text")
        ]  # fmt: skip
        reasons: list[str] = []
        try:
            stored = read_database(data, bot_id=agent_bot.id, kind=kill.operation)
        except sqlite3.Error as error:
            return [f"database unreadable: {error}"], False, texts_seen
        if stored.operation in (None, "running"):
            reasons.append(f"the {kill.operation} operation is {stored.operation or 'missing'}")
        live = [row for row in stored.rows if row[1] in ACTIVE]
        runtimes = agent_processes(data)
        directories = {p.name for p in (data / "agents").glob("*") if p.is_dir()}
        if live and live[-1][1] == DesiredState.RUNNING:
            agent_id = live[-1][0]
            if not runtimes.get(agent_id):
                reasons.append("the row says running; no runtime process")
            others = set(runtimes) - {agent_id}
            if others:
                reasons.append(f"processes of other agents: {sorted(others)}")
            if directories - {agent_id}:
                reasons.append(f"agents/ also holds {sorted(directories - {agent_id})}")
        elif live:
            reasons.append(f"the row says {live[-1][1]}")  # no kill case stops an agent
        else:
            if runtimes:
                reasons.append(f"no live row, yet runtime processes: {runtimes}")
            if directories:
                reasons.append(f"no live row, yet agents/ holds {sorted(directories)}")
        result = _result(stored, kill.operation)
        implied = {  # what the finished operation says the row must be
            ("deploy", "done"): ("live",), ("deploy", "failed"): ("interrupted", "rolled back"),
            ("delete", "done"): ("deleted",), ("delete", "failed"): ("deleted",),
        }.get((kill.operation, stored.operation or ""))  # fmt: skip
        if implied is not None and result not in implied:
            reasons.append(f"the {kill.operation} is {stored.operation}, yet the agent is {result}")
        frozen = [t for t in texts_seen if t.startswith(DEPLOYING)]
        if frozen:
            reasons.append(f"a message still says {frozen[-1][:60]!r}")
        wanted = {
            "live": ("is live",), "interrupted": ("interrupted", "Deploy failed"),
            "rolled back": ("interrupted", "Deploy failed"), "deleted": ("deleted", "done now"),
        }.get(result, ())  # fmt: skip
        told = any(_outcome_phrase(t, agent_bot.username) and any(w in t for w in wanted)
                   for t in texts_seen)  # fmt: skip
        if stored.operation in (None, "running"):
            told = False
        return reasons, told, texts_seen


def _result(stored: Stored, kind: str) -> str:
    """What the user ended up with: live, interrupted (never stored), rolled back, deleted."""
    if not stored.rows:
        return "interrupted"
    state = stored.rows[-1][1]
    if state == DesiredState.RUNNING:
        return "live"
    if state == DesiredState.DELETED:
        return "deleted" if kind == "delete" else "rolled back"
    return str(state)


def _outcome_phrase(text: str, username: str) -> bool:
    """A message that tells how the action ended (not a step of the progress)."""
    return (
        f"@{username} is live" in text or "deploy was interrupted" in text
        or "Deploy failed" in text or f"@{username} was deleted" in text
        or ("interrupted by a restart" in text and f"@{username}" in text)
    )  # fmt: skip


async def run_kills(scratch: Path, only: list[str] | None) -> list[Outcome]:
    outcomes: list[Outcome] = []
    async with FakeTelegram() as telegram, FakeOpenAI() as openai:
        bench = KillBench(telegram=telegram, openai=openai, scratch=scratch)
        for kill in KILLS:
            if only and kill.operation not in only:
                continue
            outcomes.append(await bench.run(kill))
    return outcomes


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    def tally(key: Callable[[Outcome], str]) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for outcome in outcomes:
            row = table.setdefault(key(outcome), {"cases": 0, "converged": 0})
            row["cases"] += 1
            row["converged"] += not outcome.reasons
        return table

    return {
        "cases": len(outcomes),
        "converged": sum(not o.reasons for o in outcomes),
        "secrets_lost": sum(o.secret_lost for o in outcomes),
        "duplicates": sum(o.duplicate for o in outcomes),
        "users_told": sum(o.told for o in outcomes),
        "max_converge_s": round(max((o.converge_s for o in outcomes), default=0.0), 3),
        "operations_open": sum(o.operation_open for o in outcomes),
        "stale_webhooks": sorted(o.name for o in outcomes if o.stale_webhook),
        "not_converged": {o.name: o.reasons for o in outcomes if o.reasons},
        "not_told": {o.name: o.error for o in outcomes if not o.told},
        "secrets_lost_cases": sorted(o.name for o in outcomes if o.secret_lost),
        "duplicate_cases": sorted(o.name for o in outcomes if o.duplicate),
        "by_operation": tally(lambda o: o.operation),
        "by_fault": tally(lambda o: o.fault),
        "kills": {
            o.name: {"result": o.result, "converge_s": round(o.converge_s, 3)}
            for o in outcomes
            if o.fault == "kill"
        },
    }


async def main(only: list[str] | None, *, kills: bool = True) -> dict[str, Any]:
    # The deployer and reconciler log every injected failure; the JSON line is the output.
    logging.disable(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        template = scratch / "template.db"
        await upgrade(f"sqlite+aiosqlite:///{template}")
        outcomes: list[Outcome] = []
        with FakeKubernetes(auto_ready=True) as kube:
            kube.put_object("namespaces", {"metadata": {"name": NAMESPACE}})
            async with FakeTelegram() as telegram:
                bench = Bench(kube=kube, telegram=telegram, scratch=scratch, template=template)
                try:
                    for name, operation in operations(telegram).items():
                        if only and name not in only:
                            continue
                        clean, faults = await discover(bench, name, operation)
                        outcomes.append(clean)
                        for fault in faults:
                            case = f"{name}/{fault.name}"
                            outcomes.append(await bench.run(case, operation, fault))
                finally:
                    await bench.close()
        if kills:
            outcomes += await run_kills(scratch, only)
    return summary(outcomes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="operations to run (default: all)")
    parser.add_argument(
        "--kills", action=argparse.BooleanOptionalAction, default=True,
        help="also SIGKILL the real manager process mid-deploy and mid-delete (default: on)",
    )  # fmt: skip
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.only, kills=arguments.kills))))
