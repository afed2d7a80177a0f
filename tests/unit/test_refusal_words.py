"""Every stable code a user can be told has words, in every language: refusals
(settings, access lists, tokens, endpoint URLs) and health verdicts, with the
parameters their words need, and no internal wording."""

from __future__ import annotations

import string
from enum import StrEnum

import pytest

from manager_bot import texts
from manager_bot.gateway.endpoints import EndpointGuard, EndpointPolicy, EndpointRefused
from manager_bot.i18n import LANGUAGES, Catalogues
from manager_bot.services.agent_profile import Access, check_description
from manager_bot.services.errors import (
    AccessProblem,
    ConfigProblem,
    EndpointProblem,
    InvalidAccess,
    InvalidAgentConfig,
    InvalidBotToken,
    TokenProblem,
)
from manager_bot.services.health_reasons import CrashCause, HealthKind, crash_of
from manager_bot.services.telegram import AgentTokenError
from manager_bot.views.errors import refusal, said, words_of
from tests.unit.test_translations import catalogue

# What each code's words may ask for: the parameters its raise sites give.
PARAMS = {"limit": 50, "provider": "OpenAI", "model": "gpt 9", "host": "10.0.0.5"}
PROBLEMS: list[type[StrEnum]] = [ConfigProblem, AccessProblem, TokenProblem, EndpointProblem]
MESSAGE_TEXTS = [
    texts.CONFIG_PROBLEMS,
    texts.ACCESS_PROBLEMS,
    texts.TOKEN_PROBLEMS,
    texts.ENDPOINT_PROBLEMS,
    texts.CRASH_WORDS,
]


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@pytest.mark.parametrize("codes", PROBLEMS, ids=lambda codes: codes.__name__)
def test_every_refusal_code_has_words(codes: type[StrEnum]) -> None:
    for code in codes:
        words = words_of(code)  # type: ignore[arg-type]
        assert words and placeholders(words) <= set(PARAMS), code


def test_every_health_kind_and_crash_cause_has_words() -> None:
    crashing = {HealthKind.CRASH_LOOP, HealthKind.GAVE_UP}  # told by their cause
    assert set(texts.HEALTH_WORDS) == {kind.value for kind in HealthKind} - crashing
    assert set(texts.CRASH_WORDS) == {cause.value for cause in CrashCause}
    for kind in HealthKind:
        assert texts.health_words(kind, "") != texts.HEALTH_UNKNOWN, kind


@pytest.mark.parametrize("language", [language for language in LANGUAGES if language != "en"])
def test_every_code_is_translated(language: str) -> None:
    translated = catalogue(language)
    words = [text for table in MESSAGE_TEXTS for text in table.values()]
    words += list(texts.HEALTH_WORDS.values())
    words += [texts.RESTARTED_ONCE, texts.RESTARTED_TIMES, texts.HEALTH_UNKNOWN]
    words += [texts.ACTION_REFUSED, texts.ACCESS_REFUSED, texts.ENDPOINT_REFUSED]
    for text in words:
        assert translated.get(text, "").strip(), text


@pytest.mark.parametrize(
    ("reason", "cause", "restarts"),
    [
        ("OOMKilled (restarted 5 times)", CrashCause.OUT_OF_MEMORY, 5),
        ("CrashLoopBackOff (restarted 2 times)", CrashCause.CRASHED, 2),
        ("ImagePullBackOff", CrashCause.NO_IMAGE, 0),
        ("CreateContainerConfigError (restarted 1 times)", CrashCause.CANNOT_START, 1),
        ("exited with code -9, restarted 3 times", CrashCause.CRASHED, 3),
        (None, CrashCause.CRASHED, 0),
    ],
)
def test_crash_reasons_of_both_backends_are_read(
    reason: str | None, cause: CrashCause, restarts: int
) -> None:
    assert (crash_of(reason).cause, crash_of(reason).restarts) == (cause, restarts)


def test_health_in_plain_words_in_english_and_russian() -> None:
    oom = "OOMKilled (restarted 5 times)"
    assert texts.health_words("crash_loop", oom) == "it ran out of memory and was restarted 5 times"
    assert texts.health_words("gave_up", "exited with code 1, restarted 1 times") == (
        "it keeps stopping and was restarted once"
    )
    assert texts.health_words("backlog", "120 messages are waiting to be answered") == (
        "120 messages are waiting to be answered"
    )
    assert texts.health_words("someday", "raw words") == "something is wrong with it"
    i18n = Catalogues()
    with i18n.context(), i18n.use_locale("ru"):
        assert texts.health_words("crash_loop", oom) == "ему не хватило памяти, перезапусков: 5"
        assert texts.health_words("not_ready", "not ready after 5 minutes") == (
            "он не запустился за 5 мин"
        )


def test_refusals_read_in_the_users_language_with_their_parameters() -> None:
    with pytest.raises(InvalidAccess) as refused_ids:
        Access.parse_ids("twelve")
    with pytest.raises(InvalidAccess) as refused_list:
        Access.listed(range(1, 60))
    with pytest.raises(InvalidAgentConfig) as refused_description:
        check_description("x" * 600)
    with pytest.raises(EndpointRefused) as refused_url:
        EndpointGuard(EndpointPolicy()).check("http://10.0.0.5/v1")
    not_numbers, too_many = refused_ids.value, refused_list.value
    too_long, private = refused_description.value, refused_url.value
    assert refusal(too_many) == "at most 50 users may be listed"
    assert refusal(private) == (
        "10.0.0.5 is a private, local or reserved address; only public endpoints can be used"
    )
    assert said(too_long) == "That didn't work: the description is longer than 512 characters."
    i18n = Catalogues()
    with i18n.context(), i18n.use_locale("ru"):
        assert refusal(not_numbers) == "id пользователей Telegram — это числа, например 123456789"
        assert refusal(too_many) == "в списке может быть не больше 50 пользователей"
        assert said(too_long) == "Не получилось: описание длиннее 512 символов."
        assert said(InvalidBotToken(TokenProblem.INVALID)).startswith(
            "Не получилось: Telegram сообщает, что токен бота недействителен"
        )
        assert refusal(private).startswith("10.0.0.5 — частный, локальный")


def test_what_a_user_wrote_is_escaped_in_the_words() -> None:
    refused = InvalidAgentConfig(ConfigProblem.NOT_A_MODEL, model="<b>gpt</b>")
    assert refusal(refused) == "&lt;b&gt;gpt&lt;/b&gt; is not a model id"


def test_every_reason_of_a_token_call_is_a_token_problem() -> None:
    """The deployer turns AgentTokenError's reason into a TokenProblem by value."""
    reasons = {AgentTokenError.INVALID, AgentTokenError.UNREACHABLE, AgentTokenError.REJECTED}
    assert {problem.value for problem in TokenProblem} == reasons
