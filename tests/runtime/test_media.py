"""What a user of an agent sees when they send photos, image files and voice messages."""

from __future__ import annotations

import base64
import json

from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram

PHOTO = b"\xff\xd8\xff\xe0 a photo of a cat \xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n a chart"


def sent_to_the_model(openai_server: FakeOpenAI) -> str:
    """Everything the model was sent (bodies and headers), as one text to search."""
    return json.dumps(
        [{"path": r.path, "headers": r.headers, "body": r.body} for r in openai_server.requests],
        default=repr,
    )


async def test_a_photo_with_a_caption_reaches_the_model_inline(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent() as agent:
        user = telegram.user(agent.bot)
        await user.send_photo("What is this?", data=PHOTO, thumbnail=b"tiny")
        answer = await user.wait_for(text_contains="I see an image")
        assert answer["text"] == "I see an image: What is this?"
        [part] = openai_server.image_parts()
        # The largest size, as base64 in the request: the model never fetches anything.
        expected = "data:image/jpeg;base64," + base64.b64encode(PHOTO).decode()
        assert part == {"type": "image_url", "image_url": {"url": expected}}
        sent = sent_to_the_model(openai_server)
        for secret in ("api.telegram.org", "/file/bot", agent.bot.token, telegram.url):
            assert secret not in sent
        # History keeps the caption, not the picture.
        await user.send("And now?")
        await user.wait_for(text_contains="echo: And now?")
        history = openai_server.chat_requests()[-1]["messages"]
        assert [m["content"] for m in history[1:]] == [
            "[image] What is this?",
            "I see an image: What is this?",
            "And now?",
        ]


async def test_the_largest_photo_size_under_the_cap_is_sent(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent(MAX_IMAGE_BYTES="100") as agent:
        user = telegram.user(agent.bot)
        await user.send_photo(data=b"x" * 500, thumbnail=b"small picture")
        await user.wait_for(text_contains="I see an image")
        [part] = openai_server.image_parts()
        assert part["image_url"]["url"].endswith(base64.b64encode(b"small picture").decode())


async def test_an_image_sent_as_a_file_is_seen_too(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent() as agent:
        user = telegram.user(agent.bot)
        await user.send_document("chart.png", data=PNG, mime_type="image/png", caption="Explain")
        await user.wait_for(text_contains="I see an image: Explain")
        [part] = openai_server.image_parts()
        assert part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
        await user.send_document("logo.svg", data=b"<svg/>", mime_type="image/svg+xml")
        await user.wait_for(text_contains="JPEG, PNG, WebP and GIF")
        assert len(openai_server.chat_requests()) == 1


async def test_an_image_over_the_cap_is_refused_plainly(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent(MAX_IMAGE_BYTES="100") as agent:
        user = telegram.user(agent.bot)
        await user.send_photo("Look", data=b"x" * 500)
        await user.wait_for(text_contains="too large for me")
        await user.send_document("big.png", data=b"x" * 500, mime_type="image/png")
        await user.wait_for(text_contains="too large for me")
        assert openai_server.chat_requests() == []
        assert telegram.downloads == []  # refused from the sizes Telegram told


async def test_a_model_without_vision_says_so_without_seeing_the_image(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent(LLM_VISION="false") as agent:
        user = telegram.user(agent.bot)
        await user.send_photo("What is this?", data=PHOTO)
        await user.wait_for(text_contains="I can't see images")
        assert openai_server.chat_requests() == []
        assert telegram.downloads == []


async def test_a_voice_message_is_answered_as_its_transcript(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent() as agent:
        user = telegram.user(agent.bot)
        await user.send_voice(data=b"hello from voice", duration=4)
        await user.wait_for(text_contains="echo: hello from voice")
        [transcription] = openai_server.transcription_requests()
        assert transcription["file_bytes"] == b"hello from voice"
        assert transcription["file_name"].endswith(".ogg")
        # The transcript is the user's turn, in this request and in history.
        assert openai_server.chat_requests()[-1]["messages"][-1] == {
            "role": "user",
            "content": "hello from voice",
        }
        await user.send("and?")
        await user.wait_for(text_contains="echo: and?")
        contents = [m["content"] for m in openai_server.chat_requests()[-1]["messages"][1:]]
        assert contents[:2] == ["hello from voice", "echo: hello from voice"]
        assert agent.bot.token not in sent_to_the_model(openai_server)


async def test_a_voice_message_over_the_cap_is_refused_plainly(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent(MAX_VOICE_SECONDS="30") as agent:
        user = telegram.user(agent.bot)
        await user.send_voice(data=b"a long speech", duration=31)
        await user.wait_for(text_contains="too long for me (over 30 seconds)")
        assert openai_server.transcription_requests() == []
        assert telegram.downloads == []


async def test_without_transcription_the_agent_says_it_cannot_listen(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    openai_server.transcription = False
    async with start_agent() as agent:
        user = telegram.user(agent.bot)
        await user.send_voice(data=b"hello from voice")
        await user.wait_for(text_contains="I can't listen to voice messages yet")
        assert openai_server.chat_requests() == []
