"""What a user of an agent sees: answers, streaming, splitting, groups, errors."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from runtime.chat import split_message
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.waiting import wait_until
from tests.runtime.conftest import WEBHOOK_SECRET, http_get


async def test_private_chat_streams_a_draft_then_sends_the_answer(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    openai_server.reply_with("Paris is the capital of France.")
    openai_server.latency = 1.0  # slow enough for "typing" and a draft to show
    async with start_agent() as agent:
        user = telegram.user(agent.bot)
        await user.send("What is the capital of France?")
        answer = await user.wait_for(text_contains="Paris")
        assert answer["text"] == "Paris is the capital of France."
        assert user.drafts(), "the reply should have been shown as a draft first"
        assert "Paris is the capital of France.".startswith(user.drafts()[0]["text"])
        assert "typing" in user.chat_actions()
        request = openai_server.chat_requests()[-1]
        assert request["messages"][0] == {"role": "system", "content": "You are a test assistant."}
        assert request["stream"] is True


async def test_start_reset_and_help(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent() as agent:
        user = telegram.user(agent.bot)
        await user.send("/start")
        assert "I'm Helper" in (await user.wait_for(text_contains="Hi!"))["text"]
        await user.send("/help")
        await user.wait_for(text_contains="/reset")
        await user.send("remember me")
        await user.wait_for(text_contains="echo: remember me")
        await user.send("/reset")
        await user.wait_for(text_contains="forgotten")
        await user.send("fresh")
        await user.wait_for(text_contains="echo: fresh")
        roles = [m["role"] for m in openai_server.chat_requests()[-1]["messages"]]
        assert roles == ["system", "user"]  # history was cleared


async def test_history_keeps_the_last_turns_only(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent(HISTORY_LIMIT="2") as agent:
        user = telegram.user(agent.bot)
        for word in ("one", "two", "three", "four"):
            await user.send(word)
            await user.wait_for(text_contains=f"echo: {word}")
        contents = [m["content"] for m in openai_server.chat_requests()[-1]["messages"][1:]]
        assert contents == ["two", "echo: two", "three", "echo: three", "four"]


async def test_updates_of_one_chat_are_answered_in_order(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    openai_server.latency = lambda messages: 1.0 if messages[-1]["content"] == "slow" else 0.0
    async with start_agent() as agent:
        user = telegram.user(agent.bot)
        other = telegram.user(agent.bot, first_name="Bob")
        await user.send("slow")
        await user.send("fast")
        await other.send("meanwhile")
        # Another chat is not held up by the slow one...
        await other.wait_for(text_contains="echo: meanwhile")
        assert not any("echo: slow" in m.get("text", "") for m in user.messages())
        # ...but within a chat, the second answer waits for the first.
        await user.wait_for(text_contains="echo: fast", timeout=10)
        texts = [m["text"] for m in user.messages()]
        assert texts.index("echo: slow") < texts.index("echo: fast")


async def test_long_replies_are_split_at_paragraphs(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    first, second = "A" * 3000, "B" * 3000
    openai_server.reply_with(f"{first}\n\n{second}")
    async with start_agent() as agent:
        user = telegram.user(agent.bot)
        await user.send("write a lot")
        await user.wait_for(text_contains="BBB")
        assert [m["text"] for m in user.messages()] == [first, second]


def test_split_prefers_paragraphs_then_sentences() -> None:
    text = "First sentence. " * 400  # about 6,400 characters, no paragraphs
    parts = split_message(text)
    assert all(len(part) <= 4096 for part in parts)
    assert parts[0].endswith(".")
    assert "".join(parts).replace(" ", "") == text.replace(" ", "")
    assert split_message("x" * 5000) == ["x" * 4096, "x" * 904]


async def test_markdown_telegram_rejects_falls_back_to_plain_text(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    odd = "Use snake_case names like my_var in *Python"
    openai_server.reply_with(odd)
    async with start_agent() as agent:
        user = telegram.user(agent.bot)
        await user.send("naming?")
        answer = await user.wait_for(text_contains="snake")
        assert answer["text"] == odd
        rejected = [c for c in telegram.calls("sendMessage", bot=agent.bot) if c.status == 400]
        assert rejected, "the formatted attempt should have been rejected first"


async def test_groups_answer_only_when_mentioned_or_replied_to(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent() as agent:
        group = telegram.group(agent.bot)
        await group.send("hello everyone")
        await group.send("@agent_bot what time is it?")
        answer = await group.wait_for(text_contains="echo: what time is it?")
        assert not any("hello everyone" in m["text"] for m in group.messages())
        await group.send("and tomorrow?", reply_to=answer)
        await group.wait_for(text_contains="echo: and tomorrow?")
        assert not group.drafts(), "drafts are for private chats only"


async def test_allow_list_refuses_strangers(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent(ALLOWED_USER_IDS="424242") as agent:
        stranger = telegram.user(agent.bot)
        await stranger.send("hi")
        await stranger.wait_for(text_contains="private")
        friend = telegram.user(agent.bot, user_id=424242)
        await friend.send("hi")
        await friend.wait_for(text_contains="echo: hi")
        assert len(openai_server.chat_requests()) == 1


async def test_non_text_messages_get_a_short_reply(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent() as agent:
        user = telegram.user(agent.bot)
        for send in (user.send_sticker, user.send_document):
            await send()
            await user.wait_for(text_contains="only read text, photos and voice")
        assert openai_server.chat_requests() == []


async def test_each_llm_error_class_gets_its_own_reply(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent() as agent:
        user = telegram.user(agent.bot)
        openai_server.fail_next(401)
        await user.send("a")
        await user.wait_for(text_contains="API key was rejected")
        openai_server.fail_next(429, times=3)  # the SDK retries twice
        await user.send("b")
        await user.wait_for(text_contains="too many requests", timeout=15)
        openai_server.fail_next(500, times=3)
        await user.send("c")
        await user.wait_for(text_contains="something went wrong", timeout=15)
        _, metrics = await http_get(f"{agent.url}/metrics")
        for kind in ("auth", "rate_limit", "other"):
            assert f'hatchbot_agent_llm_errors_total{{kind="{kind}"}} 1.0' in metrics
        assert "hatchbot_agent_last_llm_error_timestamp_seconds" in metrics
        for message in user.messages():
            assert "Traceback" not in message["text"] and "sk-" not in message["text"]


async def test_azure_provider(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent(
        LLM_PROVIDER="azure", LLM_BASE_URL=openai_server.root_url, LLM_MODEL="prod-gpt"
    ) as agent:
        user = telegram.user(agent.bot)
        await user.send("hello azure")
        await user.wait_for(text_contains="echo: hello azure")
        assert openai_server.requests[-1].path == "/openai/deployments/prod-gpt/chat/completions"


async def test_metrics_count_updates_replies_and_tokens(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent() as agent:
        user = telegram.user(agent.bot)
        await user.send("count these words")
        await user.wait_for(text_contains="echo:")
        _, metrics = await http_get(f"{agent.url}/metrics")
        assert "hatchbot_agent_updates_received_total 1.0" in metrics
        assert "hatchbot_agent_replies_sent_total 1.0" in metrics
        assert "hatchbot_agent_completion_tokens_total 4.0" in metrics
        assert "hatchbot_agent_llm_latency_seconds_count 1.0" in metrics


async def post_update(url: str, update: dict, secret: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=json.dumps(update), headers=headers) as response,
    ):
        return response.status


def text_update(update_id: int, chat_id: int, text: str) -> dict:
    chat = {"id": chat_id, "type": "private", "first_name": "Eve"}
    message = {
        "message_id": update_id,
        "date": 0,
        "chat": chat,
        "from": {"id": chat_id, "is_bot": False, "first_name": "Eve"},
        "text": text,
    }
    return {"update_id": update_id, "message": message}


async def test_wrong_or_missing_secret_is_rejected_and_not_processed(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent() as agent:
        update = text_update(900, 777, "let me in")
        assert await post_update(agent.webhook_url, update, None) == 401
        assert await post_update(agent.webhook_url, update, "wrong") == 401
        assert await post_update(agent.webhook_url, update, WEBHOOK_SECRET[:-1]) == 401
        other_agent = agent.webhook_url.replace("a1b2c3", "zzz")
        assert await post_update(other_agent, update, WEBHOOK_SECRET) == 404
        assert openai_server.chat_requests() == []
        assert telegram.calls("sendMessage", bot=agent.bot) == []


async def test_a_repeated_update_is_processed_once(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent() as agent:
        user = telegram.user(agent.bot)
        update = text_update(901, user.chat_id, "once please")
        assert await post_update(agent.webhook_url, update, WEBHOOK_SECRET) == 200
        assert await post_update(agent.webhook_url, update, WEBHOOK_SECRET) == 200
        await user.wait_for(text_contains="echo: once please")
        await asyncio.sleep(0.3)  # give a duplicate the chance to show up
        assert len(openai_server.chat_requests()) == 1
        assert [m["text"] for m in user.messages()] == ["echo: once please"]


async def test_webhook_answers_at_once_while_the_llm_is_slow(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    openai_server.latency = 3.0
    async with start_agent() as agent:
        user = telegram.user(agent.bot)
        update = text_update(902, user.chat_id, "take your time")
        status = await asyncio.wait_for(
            post_update(agent.webhook_url, update, WEBHOOK_SECRET), timeout=2.5
        )
        assert status == 200  # acknowledged before the LLM finished
        await user.wait_for(text_contains="echo: take your time", timeout=10)


async def test_readiness_follows_the_token(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    revoked = telegram.add_bot(username="gone_bot")
    telegram.revoke(revoked.token)
    async with start_agent(bot=revoked, wait_ready=False) as agent:

        async def rejected() -> bool:
            return agent.runtime.token_rejected

        await wait_until(rejected)
        assert await http_get(f"{agent.url}/readyz") == (503, "token rejected")
        assert (await http_get(f"{agent.url}/healthz"))[0] == 200
