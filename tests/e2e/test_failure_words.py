"""A failed deploy is told in plain words with a stable code; the detail is only in the log.
Refusals (an access list, a description, a token, an endpoint URL) and health verdicts
are told from their stable codes too, in the user's language."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from manager_bot.db.repositories import Repositories
from tests.e2e.conftest import Manager, deploy_directly, fill_wizard
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.user import SimUser

INTERNAL_WORDS = ("403", "Forbidden", "PATCH", "Kubernetes", "unreachable", "500")


async def deploy_and_fail(manager: Manager, telegram: FakeTelegram, username: str) -> str:
    user = telegram.user(manager.fake)
    await fill_wizard(user, telegram, username)
    await user.press("Deploy")
    failed = await user.wait_for(text_contains="Deploy failed", timeout=40)
    text: str = failed["text"]
    for word in INTERNAL_WORDS:
        assert word not in text, (word, text)
    return text


def reference_in(text: str) -> str:
    found = re.search(r"reference (\S+)\)", text)
    assert found, text
    return found.group(1)


async def test_a_cluster_that_refuses_is_told_plainly_and_logged_under_the_reference(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    kube.deny(verb="patch", resource="deployments", group="apps")
    with caplog.at_level(logging.WARNING):
        text = await deploy_and_fail(kube_manager, telegram, "denied_bot")
    assert "error cluster-denied" in text and "tell an admin" in text
    reference = reference_in(text)
    (logged,) = [r.getMessage() for r in caplog.records if f"ref={reference}" in r.getMessage()]
    assert "cluster-denied" in logged and "403" in logged


async def test_telegram_failing_at_the_webhook_is_told_plainly(
    kube_manager: Manager, telegram: FakeTelegram
) -> None:
    telegram.inject_fault("setWebhook", status=500, times=50)
    text = await deploy_and_fail(kube_manager, telegram, "hookless_bot")
    assert "error telegram-unavailable" in text and "try again in a minute" in text
    reference_in(text)


# -- refusals and health in the user's language ------------------------------------------
# What the user reads, in each language; a Russian reply carries no English detail.
WORDS = {
    "en": {
        "state": "State:",
        "access": "Who can talk to it",
        "listed": "Listed users…",
        "ask_list": "forward me a message from each person",
        "not_numbers": "That list can't be used: Telegram user ids are numbers, like 123456789.",
        "too_many": "That list can't be used: at most 50 users may be listed.",
        "description": "Description",
        "edit": "✏️ Edit",
        "description_screen": "What Telegram shows about @club_bot",
        "ask_description": "Send the new description of @club_bot",
        "too_long": "That is 513 characters; Telegram allows 512. Shorten it, or /cancel.",
        "have": "I already have a bot",
        "paste": "Paste the bot's token",
        "shape": "That doesn't look like a bot token.",
        "invalid": "Telegram says this token is invalid or revoked.",
        "got": "Got it: @plain_bot",
        "own_endpoint": "My own endpoint",
        "ask_endpoint": "Send the base URL",
        "private": (
            "I can't use that URL: 10.0.0.5 is a private, local or reserved address; only "
            "public endpoints can be used. Send another, or /cancel."
        ),
        "local": "I can't use that URL: localhost is a name inside a local network;",
        "last": "Last step",
        "ready": "Ready to deploy",
        "deploy": "Deploy",
        "revoked": (
            "That didn't work: Telegram says the bot's token is invalid or revoked (get a "
            "fresh one with /token in @BotFather)."
        ),
        "down": "⚠️ @sick_bot is down: it ran out of memory and was restarted 5 times",
        "health": "Health: 🔴 down: it ran out of memory and was restarted 5 times",
    },
    "ru": {
        "state": "Состояние:",
        "access": "Кто может с ним говорить",
        "listed": "Пользователи из списка…",
        "ask_list": "перешлите мне сообщение от каждого человека",
        "not_numbers": (
            "Этот список не подходит: id пользователей Telegram — это числа, например 123456789."
        ),
        "too_many": "Этот список не подходит: в списке может быть не больше 50 пользователей.",
        "description": "Описание",
        "edit": "✏️ Изменить",
        "description_screen": "Что Telegram показывает о @club_bot",
        "ask_description": "Пришлите новое описание @club_bot",
        "too_long": "Здесь 513 символов, а Telegram допускает 512. Сократите или /cancel.",
        "have": "У меня уже есть бот",
        "paste": "Вставьте токен бота",
        "shape": "Это не похоже на токен бота.",
        "invalid": "Telegram говорит, что этот токен недействителен или отозван.",
        "got": "Принято: @plain_bot",
        "own_endpoint": "Свой эндпоинт",
        "ask_endpoint": "Пришлите базовый URL",
        "private": (
            "Этот URL не подходит: 10.0.0.5 — частный, локальный или зарезервированный адрес; "
            "можно использовать только публичные эндпоинты. Пришлите другой или /cancel."
        ),
        "local": "Этот URL не подходит: localhost — имя внутри локальной сети;",
        "last": "Последний шаг",
        "ready": "Всё готово к запуску",
        "deploy": "Запустить",
        "revoked": (
            "Не получилось: Telegram сообщает, что токен бота недействителен или отозван "
            "(получите новый командой /token в @BotFather)."
        ),
        "down": "⚠️ @sick_bot не работает: ему не хватило памяти, перезапусков: 5",
        "health": "Здоровье: 🔴 не работает: ему не хватило памяти, перезапусков: 5",
    },
}
IN_BOTH = pytest.mark.parametrize("language", ["en", "ru"])
# Words a Russian reply may hold in Latin letters: names, commands, the user's own input.
NAMES = {"Telegram", "BotFather", "cancel", "token", "localhost", "sick_bot", "club_bot", "URL"}


def english_in(text: str) -> list[str]:
    """Latin words in a Russian reply that are not names: English detail leaking through."""
    return [w for w in re.findall(r"[A-Za-z_]{3,}", text) if w not in NAMES]


async def said(user: SimUser, language: str, words: str) -> dict[str, Any]:
    """The reply with these words; a Russian one holds no English besides names."""
    reply: dict[str, Any] = await user.wait_for(text_contains=words)
    if language == "ru":
        assert not english_in(reply["text"]), reply["text"]
    return reply


@IN_BOTH
async def test_a_refused_access_list_and_description_are_told_in_the_users_language(
    local_manager: Manager, telegram: FakeTelegram, language: str
) -> None:
    words = WORDS[language]
    owner = telegram.user(local_manager.fake, language_code=language)
    await deploy_directly(local_manager, telegram, owner.id, "club_bot")
    await owner.send("/status club_bot")
    await owner.wait_for(text_contains=words["state"])
    await owner.press(words["access"])
    await owner.press(words["listed"])
    await owner.wait_for(text_contains=words["ask_list"])
    await owner.send("twelve")
    await said(owner, language, words["not_numbers"])
    await owner.send(" ".join(str(100000 + i) for i in range(51)))
    await said(owner, language, words["too_many"])

    await owner.send("/status club_bot")  # a command ends the list
    await owner.press(words["description"])
    await owner.wait_for(text_contains=words["description_screen"])
    await owner.press(words["edit"])
    await owner.wait_for(text_contains=words["ask_description"])
    await owner.send("x" * 513)
    await said(owner, language, words["too_long"])


@IN_BOTH
async def test_a_malformed_or_revoked_token_and_a_private_endpoint_in_the_users_language(
    local_manager: Manager, telegram: FakeTelegram, language: str
) -> None:
    words = WORDS[language]
    revoked = telegram.add_bot(username="gone_bot", first_name="Gone")
    telegram.revoke(revoked.token)
    agent_bot = telegram.add_bot(username="plain_bot", first_name="Plain")
    user = telegram.user(local_manager.fake, language_code=language)
    await user.send("/deploy")
    await user.press(words["have"])
    await user.wait_for(text_contains=words["paste"])
    await user.send("12345:not-a-token")
    await said(user, language, words["shape"])
    await user.send(revoked.token)
    await said(user, language, words["invalid"])
    await user.send(agent_bot.token)
    await user.wait_for(text_contains=words["got"])

    await user.press(words["own_endpoint"])
    await user.wait_for(text_contains=words["ask_endpoint"])
    await user.send("http://10.0.0.5/v1")
    await said(user, language, words["private"])
    await user.send("http://localhost:11434/v1")
    await said(user, language, words["local"])


@IN_BOTH
async def test_a_token_revoked_before_deploy_is_told_in_the_users_language(
    local_manager: Manager, telegram: FakeTelegram, language: str
) -> None:
    words = WORDS[language]
    agent_bot = telegram.add_bot(username="plain_bot", first_name="Plain")
    user = telegram.user(local_manager.fake, language_code=language)
    await user.send("/deploy")
    await user.press(words["have"])
    await user.send(agent_bot.token)
    await user.wait_for(text_contains=words["got"])
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains=words["last"])
    await user.send("You are a test agent.")
    await user.wait_for(text_contains=words["ready"])
    telegram.revoke(agent_bot.token)  # revoked in @BotFather meanwhile
    await user.press(words["deploy"])
    await said(user, language, words["revoked"])


@IN_BOTH
async def test_an_agent_out_of_memory_is_told_in_plain_words_on_alert_and_card(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes, language: str
) -> None:
    words = WORDS[language]
    user = telegram.user(kube_manager.fake, language_code=language)
    await user.send("/start")
    await user.wait_for(text_contains="Hatchbot")
    agent = await deploy_directly(kube_manager, telegram, user.id, "sick_bot")
    await kube_manager.scheduler.health_check()
    kube.mark_oom_killed("agents", f"agent-{agent.id}", restarts=5)
    await kube_manager.scheduler.health_check()
    await kube_manager.scheduler.deliver_notices()
    alert = await said(user, language, words["down"])
    await user.send("/status sick_bot")
    card = await user.wait_for(text_contains=words["health"])
    for text in (alert["text"], card["text"]):
        assert "OOMKilled" not in text and "restarted 5 times)" not in text
    if language == "ru":  # the card's lines about what went wrong are Russian too
        lines = [line for line in card["text"].splitlines() if ":" in line and "@" not in line]
        wrong = [line for line in lines if "памяти" in line]
        assert wrong and not any(english_in(line) for line in wrong), card["text"]
    # The raw reason stays for logs and admins.
    async with kube_manager.database.session() as session:
        stored = await Repositories(session).agents.get(agent.id)
    assert stored is not None and stored.health_reason == "OOMKilled (restarted 5 times)"
