"""The manager speaks the user's language: Russian for a Russian Telegram app, English
otherwise, and whichever the user picks with /language, across restarts."""

from __future__ import annotations

import pytest

from manager_bot.app import register_commands
from tests.e2e.conftest import Manager, deploy_directly
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram

# What each step of the story looks like, in the language the user reads.
WORDS = {
    "en": {
        "choose": "Let's make your AI bot",
        "have": "I already have a bot",
        "paste": "Paste the bot's token",
        "got": "Got it: @{username}",
        "last": "Last step",
        "preset": "Friendly assistant",
        "ready": "Ready to deploy",
        "deploy": "Deploy",
        "live": "@{username} is live",
        "deploying": "Deploying…",
        "model": "Model: openai · gpt-4o-mini",
        "prompt": "You are a friendly",
        "agents": "Your agents",
        "running": "State: running",
        "stop": "Stop",
        "stopped": "@{username} is stopped",
        "state_stopped": "State: stopped",
        "resume": "Resume",
    },
    "ru": {
        "choose": "Давайте создадим вашего ИИ-бота",
        "have": "У меня уже есть бот",
        "paste": "Вставьте токен бота",
        "got": "Принято: @{username}",
        "last": "Последний шаг",
        "preset": "Дружелюбный помощник",
        "ready": "Всё готово к запуску",
        "deploy": "Запустить",
        "live": "@{username} работает!",
        "deploying": "Запускаю…",
        "model": "Модель: openai · gpt-4o-mini",
        "prompt": "Ты дружелюбный",
        "agents": "Ваши агенты",
        "running": "Состояние: работает",
        "stop": "Остановить",
        "stopped": "@{username} остановлен",
        "state_stopped": "Состояние: остановлен",
        "resume": "Возобновить",
    },
}


@pytest.mark.parametrize(("language_code", "words"), [("en", WORDS["en"]), ("ru-RU", WORDS["ru"])])
async def test_paste_deploy_answer_card_and_stop_in_the_users_language(
    local_manager: Manager,
    telegram: FakeTelegram,
    openai_server: FakeOpenAI,
    language_code: str,
    words: dict[str, str],
) -> None:
    agent_bot = telegram.add_bot(username="polyglot_bot", first_name="Polyglot")
    user = telegram.user(local_manager.fake, language_code=language_code)
    await user.send("/deploy")
    await user.wait_for(text_contains=words["choose"])
    await user.press(words["have"])  # a reply keyboard's button, matched in that language
    await user.wait_for(text_contains=words["paste"])
    await user.send(agent_bot.token)
    await user.wait_for(text_contains=words["got"].format(username="polyglot_bot"))
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains=words["last"])
    await user.press(words["preset"])
    await user.wait_for(text_contains=words["ready"])
    await user.press(words["deploy"])
    await user.wait_for(text_contains=words["live"].format(username="polyglot_bot"), timeout=40)
    assert any(m["text"].startswith(words["deploying"]) for m in user.messages())
    await user.wait_for(text_contains=words["model"])

    # The bot answers with the preset's instructions in the owner's language.
    friend = telegram.user(agent_bot, first_name="Friend")
    await friend.send("hi there")
    await friend.wait_for(text_contains="echo: hi there", timeout=20)
    system = openai_server.chat_requests()[-1]["messages"][0]["content"]
    assert system.startswith(words["prompt"])

    await user.send("/agents")
    await user.wait_for(text_contains=words["agents"])
    await user.press("polyglot_bot")
    await user.wait_for(text_contains=words["running"])
    await user.press(words["stop"])
    await user.wait_for(text_contains=words["stopped"].format(username="polyglot_bot"))
    card = await user.wait_for(text_contains=words["state_stopped"])
    labels = [b["text"] for row in card["reply_markup"]["inline_keyboard"] for b in row]
    assert any(words["resume"] in label for label in labels)


async def test_language_picked_with_a_command_outlives_a_restart(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake, language_code="en")
    await user.send("/help")
    await user.wait_for(text_contains="/deploy — create a new AI bot")

    await user.send("/language")
    await user.wait_for(text_contains="Pick the language")
    await user.press("Русский")
    await user.wait_for(text_contains="теперь я говорю с вами по-русски")
    await user.send("/help")
    await user.wait_for(text_contains="/deploy — создать нового ИИ-бота")

    await local_manager.restart()
    await user.send("/cancel")
    await user.wait_for(text_contains="Отменять нечего")

    # And back: the pick wins over the app's language either way.
    await user.send("/language")
    await user.wait_for(text_contains="Выберите язык")
    await user.press("English")
    await user.wait_for(text_contains="I speak English to you now")
    await user.send("/cancel")
    await user.wait_for(text_contains="There is nothing to cancel")


async def test_command_menus_in_english_and_russian(local_manager: Manager) -> None:
    parts = local_manager.parts
    await register_commands(parts.bot, [], languages=parts.languages)  # as run_manager does
    menus = local_manager.fake.commands
    english = next(commands for key, commands in menus.items() if key.endswith("}"))
    russian = next(commands for key, commands in menus.items() if key.endswith("}ru"))
    assert {"command": "language", "description": "Language: English or Russian"} in english
    assert {"command": "language", "description": "Язык: английский или русский"} in russian
    assert [c["command"] for c in english] == [c["command"] for c in russian]


async def test_an_alert_outside_any_update_is_in_the_owners_language(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    """The health sweep writes on its own: it reads the owner's language from the database."""
    user = telegram.user(kube_manager.fake, language_code="ru")
    await user.send("/start")
    await user.wait_for(text_contains="Привет! Я Hatchbot")
    agent = await deploy_directly(kube_manager, telegram, user.id, "sick_bot")
    await kube_manager.scheduler.health_check()
    kube.mark_oom_killed("agents", f"agent-{agent.id}", restarts=5)
    await kube_manager.scheduler.health_check()
    await kube_manager.scheduler.deliver_notices()
    down = await user.wait_for(text_contains="⚠️ @sick_bot не работает")
    labels = [b["text"] for row in down["reply_markup"]["inline_keyboard"] for b in row]
    assert labels == ["📜 Журнал", "🔄 Перезапустить", "🔕 Тишина на 24 ч"]
