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
- max_converge_s: the longest reconcile (+ repair) of any case.
Not covered: a manager SIGKILLed between steps (tests/e2e/test_kill_mid_deploy.py); a
second fault during a rollback (faults go only on calls a clean run makes).
Usage: python bench/faults.py [--only deploy stop ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
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
from tests.fakes.kubelet_env import secret_strings  # noqa: E402
from tests.fakes.kubernetes_api import FakeKubernetes  # noqa: E402
from tests.fakes.telegram_api import FakeBot, FakeTelegram, make_token  # noqa: E402

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
    }


async def main(only: list[str] | None) -> dict[str, Any]:
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
    return summary(outcomes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="operations to run (default: all)")
    print(json.dumps(asyncio.run(main(parser.parse_args().only))))
