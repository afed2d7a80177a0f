"""An owner's controls over a deployed agent, through the real deployer and the fakes:
who may talk to it, a pasted bot's new token, and the bot's profile in Telegram."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from manager_bot.backends.local import LocalBackend
from manager_bot.db.migrate import downgrade, upgrade
from manager_bot.db.models import Agent, utcnow
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.services.agent_profile import Access, access_of
from manager_bot.services.deployer import NewAgent
from manager_bot.services.errors import (
    AgentNotFound,
    InvalidAccess,
    InvalidAgentConfig,
    InvalidBotToken,
    TokenOfAnotherBot,
)
from manager_bot.services.telegram import AgentTelegram, AgentTokenError, ManagedAccess
from runtime.commands import COMMANDS
from tests.fakes.kubelet_env import container_env, secret_strings
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.integration.world import World, world_on

PUBLIC_URL = "https://bots.example.com"
OWNER, STRANGER, FRIEND, OTHER_FRIEND = 1001, 2002, 4444, 5555
PROMPT = "You are Helper, a patient tutor. Answer in short sentences."


def new_agent(bot: FakeBot, **changes: object) -> NewAgent:
    fields: dict[str, object] = {
        "owner_id": OWNER,
        "bot_token": bot.token,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "system_prompt": PROMPT,
    }
    fields.update(changes)
    return NewAgent(**fields)  # type: ignore[arg-type]


def managed_bot(world: World, username: str = "mine_bot") -> FakeBot:
    """A bot the manager created through Managed Bots (as SimUser.create_managed_bot)."""
    bot = world.telegram.add_bot(username=username, first_name="Mine")
    bot.manager = world.manager
    return bot


def pod_env(kube: FakeKubernetes, agent: Agent) -> dict[str, str]:
    """What the agent's container receives: its Deployment's env through the kubelet."""
    name = f"agent-{agent.id}"
    deployment = kube.get_object("deployments", "agents", name)
    secret = kube.get_object("secrets", "agents", name)
    assert deployment is not None and secret is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return container_env(container, secrets={name: secret_strings(secret)}, config_maps={})


def generation(kube: FakeKubernetes, agent: Agent) -> int:
    deployment = kube.get_object("deployments", "agents", f"agent-{agent.id}")
    assert deployment is not None
    number: int = deployment["metadata"]["generation"]
    return number


def menu(bot: FakeBot) -> dict[str, str]:
    default = bot.commands.get('{"type": "default"}', [])
    return {command["command"]: command["description"] for command in default}


async def stored(world: World, agent: Agent) -> Agent:
    found = await world.deployer.stored(agent.id)
    assert found is not None
    return found


# -- who may talk to the agent ------------------------------------------------------------


async def test_access_reaches_a_pasted_bots_runtime_and_survives_edits_reverts_and_reconcile(
    kube_world: World, kube: FakeKubernetes
) -> None:
    deployer = kube_world.deployer
    bot = kube_world.telegram.add_bot(username="helper_bot")
    agent = await deployer.deploy(new_agent(bot))
    assert "ALLOWED_USER_IDS" not in pod_env(kube, agent)  # everyone, by default

    before = generation(kube, agent)
    agent = await deployer.set_access(owner_id=OWNER, agent_id=agent.id, access=Access.owner_only())
    assert pod_env(kube, agent)["ALLOWED_USER_IDS"] == str(OWNER)
    assert generation(kube, agent) == before + 1  # the pods rolled

    listed = Access.parse_ids(f"{OTHER_FRIEND}, {FRIEND}\n{FRIEND}")
    await deployer.set_access(owner_id=OWNER, agent_id=agent.id, access=listed)
    expected = f"{OWNER},{FRIEND},{OTHER_FRIEND}"  # the owner is always let in
    assert pod_env(kube, agent)["ALLOWED_USER_IDS"] == expected

    await deployer.change(owner_id=OWNER, agent_id=agent.id, system_prompt="Be terse.")
    assert pod_env(kube, agent)["ALLOWED_USER_IDS"] == expected
    await deployer.revert(owner_id=OWNER, agent_id=agent.id)
    assert pod_env(kube, agent)["ALLOWED_USER_IDS"] == expected

    kube.delete_object("deployments", "agents", f"agent-{agent.id}")  # drift
    report = await kube_world.reconciler.reconcile()
    assert report.applied == (agent.id,)
    assert pod_env(kube, agent)["ALLOWED_USER_IDS"] == expected

    await deployer.set_access(owner_id=OWNER, agent_id=agent.id, access=Access.everyone())
    assert "ALLOWED_USER_IDS" not in pod_env(kube, agent)
    # A pasted bot has no Telegram-side access settings: nothing is asked of Telegram.
    assert kube_world.telegram.calls("setManagedBotAccessSettings") == []
    async with kube_world.database.session() as session:
        entries = await Repositories(session).audit.recent()
    assert [e.detail for e in entries if e.action == "access"] == [
        "everyone (0 listed)",
        "listed (2 listed)",
        "owner (0 listed)",
    ]


async def test_bad_access_lists_and_other_owners_are_refused(
    kube_world: World, kube: FakeKubernetes
) -> None:
    for bad in ("", "12 abc", "-5", ",".join(str(n) for n in range(1, 52))):
        with pytest.raises(InvalidAccess):
            Access.parse_ids(bad)
    with pytest.raises(InvalidAccess):
        Access(Access.owner_only().mode, (FRIEND,))
    agent = await kube_world.deployer.deploy(
        new_agent(kube_world.telegram.add_bot(username="helper_bot"))
    )
    with pytest.raises(AgentNotFound):
        await kube_world.deployer.set_access(
            owner_id=STRANGER, agent_id=agent.id, access=Access.owner_only()
        )
    assert "ALLOWED_USER_IDS" not in pod_env(kube, agent)


async def test_a_managed_bots_access_is_set_at_telegram_and_in_its_runtime(
    kube_world: World, kube: FakeKubernetes
) -> None:
    deployer, telegram = kube_world.deployer, kube_world.telegram
    bot = managed_bot(kube_world)
    agent = await deployer.deploy(new_agent(bot, managed=True))
    assert (bot.access_restricted, bot.access_user_ids) == (False, [])  # set at deploy
    (call,) = telegram.calls("setManagedBotAccessSettings")
    assert call.bot is kube_world.manager  # with the manager's token, not the agent's
    assert call.params["user_id"] == bot.id

    await deployer.set_access(owner_id=OWNER, agent_id=agent.id, access=Access.owner_only())
    assert (bot.access_restricted, bot.access_user_ids) == (True, [])
    assert pod_env(kube, agent)["ALLOWED_USER_IDS"] == str(OWNER)  # defence in depth

    listed = Access.listed([FRIEND, OWNER])
    await deployer.set_access(owner_id=OWNER, agent_id=agent.id, access=listed)
    assert (bot.access_restricted, bot.access_user_ids) == (True, [FRIEND])
    assert await kube_world.agent_telegram.managed_access(bot.id) == ManagedAccess(
        restricted=True, user_ids=(FRIEND,)
    )
    assert pod_env(kube, agent)["ALLOWED_USER_IDS"] == f"{OWNER},{FRIEND}"

    # Telegram lets at most 10 users in besides the owner: more is refused, nothing changes.
    with pytest.raises(InvalidAccess):
        await deployer.set_access(
            owner_id=OWNER, agent_id=agent.id, access=Access.listed(range(9000, 9011))
        )
    assert bot.access_user_ids == [FRIEND]

    # Telegram away: the runtime enforces it at once, reconcile sets Telegram's later.
    telegram.inject_fault("setManagedBotAccessSettings", status=502)
    agent = await deployer.set_access(owner_id=OWNER, agent_id=agent.id, access=Access.everyone())
    assert not agent.profile_synced
    assert "ALLOWED_USER_IDS" not in pod_env(kube, agent)
    assert bot.access_restricted
    await kube_world.reconciler.reconcile()
    assert not bot.access_restricted
    assert (await stored(kube_world, agent)).profile_synced


async def test_only_the_managing_bot_may_change_a_managed_bots_access(
    kube_world: World,
) -> None:
    bot = managed_bot(kube_world)
    intruder = kube_world.telegram.add_bot(username="intruder_bot", can_manage_bots=True)
    other_manager = AgentTelegram(
        api_url=kube_world.telegram.url, manager_token=SecretStr(intruder.token)
    )
    try:
        with pytest.raises(AgentTokenError) as refused:
            await other_manager.set_managed_access(bot.id, restricted=True)
        assert refused.value.reason == AgentTokenError.REJECTED
        with pytest.raises(AgentTokenError):
            await other_manager.managed_access(bot.id)
    finally:
        await other_manager.close()
    assert not bot.access_restricted


# -- a pasted bot's new token ---------------------------------------------------------------


async def test_another_bots_token_is_refused_and_changes_nothing(
    kube_world: World, kube: FakeKubernetes
) -> None:
    deployer, telegram = kube_world.deployer, kube_world.telegram
    bot = telegram.add_bot(username="helper_bot")
    agent = await deployer.deploy(new_agent(bot))
    secret_before = kube.get_object("secrets", "agents", f"agent-{agent.id}")
    other = telegram.add_bot(username="other_bot")
    with pytest.raises(TokenOfAnotherBot) as refused:
        await deployer.replace_token(owner_id=OWNER, agent_id=agent.id, new_token=other.token)
    assert (refused.value.expected, refused.value.given) == ("helper_bot", "other_bot")
    assert other.token not in str(refused.value)
    revoked = telegram.add_bot(username="gone_bot")
    telegram.revoke(revoked.token)
    for token in (revoked.token, "123:not-a-token"):
        with pytest.raises(InvalidBotToken):
            await deployer.replace_token(owner_id=OWNER, agent_id=agent.id, new_token=token)
    with pytest.raises(AgentNotFound):
        await deployer.replace_token(owner_id=STRANGER, agent_id=agent.id, new_token=bot.token)

    unchanged = await stored(kube_world, agent)
    assert deployer.spec_for(unchanged).secrets.bot_token.get_secret_value() == bot.token
    assert unchanged.gateway_key_hash == agent.gateway_key_hash
    assert kube.get_object("secrets", "agents", f"agent-{agent.id}") == secret_before
    assert bot.webhook is not None and bot.webhook.url == f"{PUBLIC_URL}/webhook/{agent.id}"
    assert other.webhook is None
    assert telegram.calls("setWebhook", bot=other) == []


async def test_the_same_bots_new_token_runs_the_agent_and_its_webhook(
    kube_world: World, kube: FakeKubernetes
) -> None:
    deployer, telegram = kube_world.deployer, kube_world.telegram
    bot = telegram.add_bot(username="helper_bot")
    agent = await deployer.deploy(new_agent(bot))
    old_token = bot.token
    before = generation(kube, agent)
    hooks_before = len(telegram.calls("setWebhook", bot=bot))

    new_token = telegram.reissue_token(bot)  # BotFather's /revoke
    replaced = await deployer.replace_token(
        owner_id=OWNER, agent_id=agent.id, new_token=f" {new_token}\n"
    )
    env = pod_env(kube, replaced)
    assert env["BOT_TOKEN"] == new_token
    assert old_token not in str(kube.get_object("secrets", "agents", f"agent-{agent.id}"))
    assert generation(kube, agent) == before + 1
    assert replaced.gateway_key_hash != agent.gateway_key_hash  # a new credential with it
    # The old token's webhook was cleared if it still worked (it did not: a 401), then
    # the new token set it; the fake knows only the new token now.
    assert telegram.calls("deleteWebhook")[-1].status == 401
    assert len(telegram.calls("setWebhook", bot=bot)) == hooks_before + 1
    assert bot.webhook is not None and bot.webhook.url == f"{PUBLIC_URL}/webhook/{agent.id}"
    async with kube_world.database.session() as session:
        entries = await Repositories(session).audit.recent()
    assert entries[0].action == "replace-token" and entries[0].outcome == "ok"
    assert new_token not in str([(e.action, e.detail) for e in entries])


async def test_a_managed_bot_keeps_its_own_token_rotation(kube_world: World) -> None:
    bot = managed_bot(kube_world)
    agent = await kube_world.deployer.deploy(new_agent(bot, managed=True))
    with pytest.raises(InvalidAgentConfig):
        await kube_world.deployer.replace_token(
            owner_id=OWNER, agent_id=agent.id, new_token=bot.token
        )


# -- the bot's profile ----------------------------------------------------------------------


async def test_commands_and_description_are_set_at_deploy_and_on_edits(
    kube_world: World,
) -> None:
    deployer, telegram = kube_world.deployer, kube_world.telegram
    bot = telegram.add_bot(username="helper_bot")
    agent = await deployer.deploy(new_agent(bot))
    assert (
        menu(bot)
        == COMMANDS
        == {
            "start": "Start the conversation",
            "reset": "Forget our conversation so far",
            "help": "How to talk to me",
        }
    )
    assert bot.descriptions == {"": "You are Helper, a patient tutor."}
    assert bot.short_descriptions == {"": "You are Helper, a patient tutor."}
    assert agent.profile_synced

    agent = await deployer.set_description(
        owner_id=OWNER, agent_id=agent.id, text="  Your patient maths tutor.\nAsk away!  "
    )
    assert agent.description == "Your patient maths tutor. Ask away!" and agent.profile_synced
    assert bot.descriptions[""] == bot.short_descriptions[""] == agent.description

    long = "Helps with maths homework, step by step, at any level. " * 9  # ~500 characters
    await deployer.set_description(owner_id=OWNER, agent_id=agent.id, text=long)
    assert bot.descriptions[""] == long.strip()
    assert len(bot.short_descriptions[""]) <= 120
    assert bot.short_descriptions[""].endswith("…")
    with pytest.raises(InvalidAgentConfig):
        await deployer.set_description(owner_id=OWNER, agent_id=agent.id, text="x" * 513)
    assert bot.descriptions[""] == long.strip()

    # An owner's description stays when the prompt changes...
    calls = len(telegram.calls("setMyDescription"))
    await deployer.change(owner_id=OWNER, agent_id=agent.id, system_prompt="You are Max. Hi.")
    assert bot.descriptions[""] == long.strip()
    assert len(telegram.calls("setMyDescription")) == calls
    # ...one derived from the prompt follows it, through edits and reverts.
    await deployer.set_description(owner_id=OWNER, agent_id=agent.id, text=None)
    assert bot.descriptions[""] == "You are Max."
    await deployer.change(owner_id=OWNER, agent_id=agent.id, system_prompt="You are Mia! Ok.")
    assert bot.descriptions[""] == bot.short_descriptions[""] == "You are Mia!"
    await deployer.revert(owner_id=OWNER, agent_id=agent.id)
    assert bot.descriptions[""] == "You are Max."
    assert menu(bot) == COMMANDS


@pytest.mark.parametrize("fault", [{"status": 429, "retry_after": 5}, {"status": 500}])
async def test_a_failing_profile_call_does_not_fail_the_deploy_and_reconcile_sets_it(
    kube_world: World, fault: dict[str, int]
) -> None:
    telegram = kube_world.telegram
    bot = telegram.add_bot(username="helper_bot")
    telegram.inject_fault("setMyDescription", **fault)
    agent = await kube_world.deployer.deploy(new_agent(bot))
    assert agent.desired_state == "running" and agent.observed_state == "running"
    assert bot.webhook is not None
    assert not agent.profile_synced and bot.descriptions == {}

    await kube_world.reconciler.reconcile()
    assert bot.descriptions == {"": "You are Helper, a patient tutor."}
    assert (await stored(kube_world, agent)).profile_synced
    calls = len(telegram.calls("setMyDescription"))
    await kube_world.reconciler.reconcile()  # synced: nothing asked again
    assert len(telegram.calls("setMyDescription")) == calls


async def test_the_fake_keeps_telegrams_description_limits(telegram: FakeTelegram) -> None:
    bot = telegram.add_bot(username="helper_bot")
    agents = AgentTelegram(api_url=telegram.url)
    try:
        with pytest.raises(AgentTokenError, match="description is too long"):
            await agents.set_descriptions(bot.token, description="x" * 513, short="ok")
        with pytest.raises(AgentTokenError, match="short description is too long"):
            await agents.set_descriptions(bot.token, description="ok", short="x" * 121)
        await agents.set_descriptions(bot.token, description="x" * 512, short="y" * 120)
    finally:
        await agents.close()
    assert bot.descriptions == {"": "x" * 512} and bot.short_descriptions == {"": "y" * 120}


# -- what a refused user sees ------------------------------------------------------------------


async def test_a_stranger_messaging_an_owner_only_agent_is_refused_by_its_runtime(
    tmp_path: Path, sqlite_url: str, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    """The local backend runs the real runtime, polling the fake Telegram."""
    backend = LocalBackend(data_dir=tmp_path, restart_backoff=(0.2, 0.5), crash_loop_threshold=3)
    try:
        async with world_on(backend, url=sqlite_url, telegram=telegram, llm=openai_server) as world:
            bot = telegram.add_bot(username="helper_bot", first_name="Helper")
            agent = await world.deployer.deploy(new_agent(bot))
            await world.deployer.set_access(
                owner_id=OWNER, agent_id=agent.id, access=Access.owner_only()
            )
            stranger = telegram.user(bot, user_id=STRANGER)
            await stranger.send("hi")
            await stranger.wait_for(text_contains="private", timeout=30)
            owner = telegram.user(bot, user_id=OWNER)
            await owner.send("hello")
            await owner.wait_for(text_contains="echo: hello", timeout=30)
            assert [r["messages"][-1]["content"] for r in openai_server.chat_requests()] == [
                "hello"
            ]
    finally:
        await backend.shutdown_agents()


# -- the migration ----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


async def test_the_upgrade_lets_everyone_talk_to_existing_agents_and_sets_their_profile_later(
    database_url: str,
) -> None:
    """Rows made before 0008 run as before (everyone) and are due a profile (reconcile)."""
    await upgrade(database_url, "0007")
    database = Database(database_url)
    try:
        async with database.session() as session:
            await session.execute(
                text("INSERT INTO users (id, first_name, is_banned, blocked_bot, created_at, "
                     "last_seen_at) VALUES (1, 'U', false, false, :now, :now)"),
                {"now": utcnow()},
            )  # fmt: skip
            await session.execute(
                text("INSERT INTO agents (id, owner_id, name, bot_id, bot_username, managed, "
                     "token_encrypted, webhook_secret_encrypted, provider, model, "
                     "system_prompt, revision, desired_state, created_at, updated_at) VALUES "
                     "('oldagent01', 1, 'Old', 9, 'old_bot', false, 't', 's', 'openai', "
                     "'gpt-4o-mini', 'Be kind.', 1, 'running', :now, :now)"),
                {"now": utcnow()},
            )  # fmt: skip
        await upgrade(database_url)
        async with database.session() as session:
            repos = Repositories(session)
            agent = await repos.agents.get("oldagent01")
            assert agent is not None
            assert access_of(agent) == Access.everyone() and agent.description is None
            assert not agent.profile_synced
            assert list(await repos.agents.profile_pending(10)) == ["oldagent01"]
        await downgrade(database_url, "0007")
        await upgrade(database_url)
    finally:
        await database.close()
