"""Any model a provider serves, and a user's own OpenAI-compatible endpoint (Ollama, vLLM,
OpenRouter...), chosen in the chat; only the gateway connects to such an endpoint."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Manager, paste_token
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram


@pytest.fixture
def manager_env(openai_server: FakeOpenAI) -> dict[str, str]:
    """The fake stands for an operator-allowed internal endpoint (an in-cluster Ollama)."""
    return {
        "OPENAI_API_KEY": "sk-platformkeyplatformkey00",
        "GATEWAY_ALLOWED_ENDPOINTS": openai_server.url.split("/")[2],
    }


async def finish_and_deploy(user: object, username: str) -> None:
    await user.wait_for(text_contains="Last step")  # type: ignore[attr-defined]
    await user.send("You are a test agent.")  # type: ignore[attr-defined]
    await user.wait_for(text_contains="Ready to deploy")  # type: ignore[attr-defined]
    await user.press("Deploy")  # type: ignore[attr-defined]
    await user.wait_for(text_contains=f"@{username} is live", timeout=40)  # type: ignore[attr-defined]


async def test_any_model_id_of_a_provider_can_be_typed(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    user = telegram.user(local_manager.fake)
    await paste_token(user, telegram, "typed_bot")
    await user.press("Other OpenAI model…")
    await user.wait_for(text_contains="Type the model's id")
    await user.send("gpt 4 please; drop table")
    await user.wait_for(text_contains="isn't a model id")
    await user.send("gpt-4.1-nano")
    await finish_and_deploy(user, "typed_bot")
    friend = telegram.user(telegram.bot("typed_bot"))
    await friend.send("hello")
    await friend.wait_for(text_contains="echo: hello", timeout=20)
    assert openai_server.chat_requests()[-1]["model"] == "gpt-4.1-nano"


async def test_a_users_own_endpoint_is_checked_then_served_through_the_gateway(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    user = telegram.user(local_manager.fake)
    await paste_token(user, telegram, "ollama_bot")
    await user.press("My own endpoint")
    await user.wait_for(text_contains="base URL")
    await user.send("http://169.254.169.254/latest")  # the cloud's metadata service
    await user.wait_for(text_contains="can't use that URL")
    await user.send("ftp://example.com/v1")
    await user.wait_for(text_contains="can't use that URL")
    await user.send(openai_server.url)
    await user.wait_for(text_contains="Type the model's id")
    await user.send("llama3.1:8b")
    await user.wait_for(text_contains="needs none")
    await user.press("It needs no key")
    await finish_and_deploy(user, "ollama_bot")
    friend = telegram.user(telegram.bot("ollama_bot"))
    await friend.send("hi llama")
    await friend.wait_for(text_contains="echo: hi llama", timeout=20)
    request = openai_server.requests[-1]
    assert request.body["model"] == "llama3.1:8b"
    # Nothing but the gateway asked the endpoint anything (no key check from the manager).
    assert [r.path for r in openai_server.requests] == ["/v1/chat/completions"]


async def test_the_card_moves_an_agent_to_the_users_own_endpoint(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    user = telegram.user(local_manager.fake)
    await paste_token(user, telegram, "moving_bot")
    await user.press("OpenAI · gpt-4o-mini")
    await finish_and_deploy(user, "moving_bot")
    await user.send("/status moving_bot")
    await user.wait_for(text_contains="Version: 1")
    await user.press("Change model")
    await user.press("My own endpoint")
    await user.wait_for(text_contains="base URL")
    await user.send("http://localhost:11434/v1")
    await user.wait_for(text_contains="can't use that URL")
    await user.send(openai_server.url)
    await user.send("qwen2.5:7b")
    await user.wait_for(text_contains="needs none")
    key = await user.send("sk-ownendpointkeyownendpoint")
    await user.wait_for(text_contains="now uses qwen2.5:7b")
    assert key["message_id"] in user.deleted_own_messages()
    friend = telegram.user(telegram.bot("moving_bot"))
    await friend.send("hi qwen")
    await friend.wait_for(text_contains="echo: hi qwen", timeout=20)
    assert openai_server.requests[-1].body["model"] == "qwen2.5:7b"
