"""The fake OpenAI server, driven by the real openai SDK, behaves like the API."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.openai_api import FakeOpenAI


def client(server: FakeOpenAI, key: str = "sk-test", **kwargs: float) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url, api_key=key, max_retries=0, **kwargs)


async def test_completion_with_usage(openai_server: FakeOpenAI) -> None:
    async with client(openai_server) as llm:
        answer = await llm.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}]
        )
    assert answer.choices[0].message.content == "echo: hello there"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    assert openai_server.chat_requests()[0]["model"] == "gpt-4o-mini"


async def test_streaming_arrives_in_pieces_with_usage(openai_server: FakeOpenAI) -> None:
    openai_server.reply_with("one two three four")
    async with client(openai_server) as llm:
        stream = await llm.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage:
                usage = chunk.usage
    assert len(pieces) == 4
    assert "".join(pieces) == "one two three four"
    assert usage is not None and usage.completion_tokens == 4


async def test_models_list(openai_server: FakeOpenAI) -> None:
    async with client(openai_server) as llm:
        models = [model.id async for model in llm.models.list()]
    assert models == ["gpt-4o-mini", "gpt-4o"]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, openai.AuthenticationError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
async def test_injected_errors_surface_as_sdk_errors(
    openai_server: FakeOpenAI, status: int, error: type[Exception]
) -> None:
    openai_server.fail_next(status)
    async with client(openai_server) as llm:
        with pytest.raises(error):
            await llm.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
        # Only the next call fails.
        await llm.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )


async def test_wrong_key_is_rejected(openai_server: FakeOpenAI) -> None:
    openai_server.expected_key = "sk-right"
    async with client(openai_server, key="sk-wrong") as llm:
        with pytest.raises(openai.AuthenticationError):
            await llm.models.list()
    assert all("sk-wrong" not in str(r.headers) for r in openai_server.requests)


async def test_latency_makes_the_client_time_out(openai_server: FakeOpenAI) -> None:
    openai_server.latency = 2.0
    async with client(openai_server, timeout=0.2) as llm:
        with pytest.raises(openai.APITimeoutError):
            await llm.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )


async def test_azure_deployment_path(openai_server: FakeOpenAI) -> None:
    openai_server.expected_key = "azure-key"
    llm = openai.AsyncAzureOpenAI(
        azure_endpoint=openai_server.root_url,
        api_key="azure-key",
        api_version="2024-10-21",
        max_retries=0,
    )
    async with llm:
        answer = await llm.chat.completions.create(
            model="my-deployment", messages=[{"role": "user", "content": "hi"}]
        )
    assert answer.choices[0].message.content == "echo: hi"
    assert openai_server.requests[-1].path == "/openai/deployments/my-deployment/chat/completions"
