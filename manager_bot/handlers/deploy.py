"""/deploy: the wizard from "no bot yet" to a live agent.

Steps: get a bot (Managed Bots, or a pasted BotFather token), pick a model
(and give a key if the platform has none for it), write the instructions,
confirm. Secrets typed into the chat are deleted at once and kept in the wizard
state only encrypted, because that state is stored in the database or Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message, ReplyKeyboardRemove

from manager_bot import keyboards, texts
from manager_bot.crypto import Vault
from manager_bot.gateway.endpoints import EndpointGuard
from manager_bot.handlers.agents import send_card
from manager_bot.handlers.model_steps import (
    ask_for_details,
    ask_key_if_needed,
    take_endpoint,
    take_model_name,
)
from manager_bot.keyboards import ModelChoice, WizardAction
from manager_bot.logs import new_request_id
from manager_bot.services.deployer import (
    MAX_PROMPT_CHARS,
    Deployer,
    DeployStep,
    NewAgent,
    Progress,
)
from manager_bot.services.errors import (
    BotAlreadyUsed,
    DeployFailed,
    DeployThrottled,
    InvalidAgentConfig,
    InvalidBotToken,
    QuotaReached,
)
from manager_bot.services.llm_keys import KeyCheck, check_key
from manager_bot.services.providers import Provider, find_provider
from manager_bot.services.telegram import AgentTokenError, BotIdentity, looks_like_token

log = logging.getLogger(__name__)


class Deploy(StatesGroup):
    bot = State()
    token = State()
    model = State()
    endpoint = State()  # "My own endpoint": its base URL
    model_name = State()  # "Other model…": the id typed
    key = State()
    prompt = State()
    confirm = State()
    deploying = State()


async def _delete_quietly(message: Message) -> None:
    """Remove a message that carried a secret; a failure must not keep the secret around."""
    with contextlib.suppress(TelegramBadRequest):
        await message.delete()


async def start_wizard(message: Message, state: FSMContext, deployer: Deployer) -> None:
    """Starts the wizard, unless the user is at their quota."""
    assert message.from_user is not None
    if await deployer.queries.quota_reached(message.from_user.id):
        await message.answer(texts.QUOTA.format(limit=deployer.max_agents_per_user))
        return
    await state.clear()
    await state.set_state(Deploy.bot)
    await message.answer(
        texts.CHOOSE_BOT, reply_markup=keyboards.choose_bot(first_name=message.from_user.first_name)
    )


async def managed_bot_update(event: object) -> None:
    """The `managed_bot` update; the service message in the chat drives the wizard."""
    log.info("managed bot created")


async def managed_bot_created(
    message: Message, state: FSMContext, bot: Bot, deployer: Deployer, vault: Vault,
    providers: tuple[Provider, ...],
) -> None:  # fmt: skip
    """Telegram created the user's bot: fetch its token, no copy-paste needed."""
    assert message.managed_bot_created is not None and message.from_user is not None
    created = message.managed_bot_created.bot_user
    token = await bot.get_managed_bot_token(user_id=created.id)
    await _accept_token(
        message,
        state,
        token=token,
        managed=True,
        deployer=deployer,
        vault=vault,
        providers=providers,
    )


async def wants_to_paste(message: Message, state: FSMContext) -> None:
    await state.set_state(Deploy.token)
    await message.answer(texts.PASTE_TOKEN, reply_markup=ReplyKeyboardRemove())


async def bot_step_hint(
    message: Message, state: FSMContext, deployer: Deployer, vault: Vault,
    providers: tuple[Provider, ...],
) -> None:  # fmt: skip
    """A token pasted before tapping "I already have a bot" is taken (and deleted) all the same."""
    token = (message.text or "").strip()
    if looks_like_token(token):
        await _accept_token(
            message, state, token=token, managed=False, deployer=deployer, vault=vault,
            providers=providers, delete_message=True,
        )  # fmt: skip
        return
    await message.answer(texts.CHOOSE_BOT_HINT)


async def pasted_token(
    message: Message, state: FSMContext, deployer: Deployer, vault: Vault,
    providers: tuple[Provider, ...],
) -> None:  # fmt: skip
    """Deletes the message whatever it is (it may be a secret), while the token is checked."""
    token = (message.text or "").strip()
    if not looks_like_token(token):
        await _delete_quietly(message)
        await message.answer(texts.TOKEN_SHAPE)
        return
    await _accept_token(
        message, state, token=token, managed=False, deployer=deployer, vault=vault,
        providers=providers, delete_message=True,
    )  # fmt: skip


async def token_step_hint(message: Message) -> None:
    await message.answer(texts.PASTE_TOKEN)


async def _check_token(
    message: Message, token: str, deployer: Deployer, *, delete_message: bool
) -> BotIdentity:
    assert message.from_user is not None
    check = deployer.check_token(token, owner_id=message.from_user.id)
    if not delete_message:
        return await check
    # Both finish (an invalid token waits for the deletion too) before anything is said.
    deleted, checked = await asyncio.gather(_delete_quietly(message), check, return_exceptions=True)
    for outcome in (deleted, checked):
        if isinstance(outcome, BaseException):
            raise outcome
    assert isinstance(checked, BotIdentity)
    return checked


async def _accept_token(
    message: Message, state: FSMContext, *, token: str, managed: bool, deployer: Deployer,
    vault: Vault, providers: tuple[Provider, ...], delete_message: bool = False,
) -> None:  # fmt: skip
    """Checks the token; `delete_message` deletes the message carrying it meanwhile, and
    no answer is sent before that deletion is done."""
    assert message.from_user is not None
    try:
        identity = await _check_token(message, token, deployer, delete_message=delete_message)
    except InvalidBotToken as error:
        unreachable = error.reason == AgentTokenError.UNREACHABLE
        await message.answer(texts.TOKEN_UNREACHABLE if unreachable else texts.TOKEN_INVALID)
        return
    except BotAlreadyUsed as error:
        await message.answer(texts.BOT_IN_USE.format(username=str(error)))
        return
    await state.update_data(token=vault.encrypt(token), managed=managed, username=identity.username)
    await state.set_state(Deploy.model)
    await message.answer(
        texts.BOT_READY.format(username=identity.username), reply_markup=ReplyKeyboardRemove()
    )
    await message.answer(texts.PICK_MODEL, reply_markup=keyboards.models(providers))


async def picked_model(
    query: CallbackQuery, callback_data: ModelChoice, state: FSMContext,
    providers: tuple[Provider, ...],
) -> None:  # fmt: skip
    provider = find_provider(providers, callback_data.provider)
    if provider is None or (callback_data.model and callback_data.model not in provider.models):
        await query.answer(texts.NOT_FOUND, show_alert=True)  # forged or stale data
        return
    await query.answer()
    await state.update_data(
        provider=provider.name, model=callback_data.model, key=None, endpoint=None
    )
    assert isinstance(query.message, Message)
    asked = await ask_for_details(
        query.message, state, provider, callback_data.model,
        endpoint_state=Deploy.endpoint, model_name_state=Deploy.model_name,
    )  # fmt: skip
    if not asked:
        await _after_model(query.message, state, provider)


async def typed_endpoint(
    message: Message, state: FSMContext, endpoint_guard: EndpointGuard
) -> None:
    await take_endpoint(message, state, endpoint_guard, next_state=Deploy.model_name)


async def typed_model_name(
    message: Message, state: FSMContext, providers: tuple[Provider, ...]
) -> None:
    provider = await take_model_name(message, state, providers)
    if provider is not None:
        await _after_model(message, state, provider)


async def _after_model(message: Message, state: FSMContext, provider: Provider) -> None:
    """A model is chosen: its key next if one is needed, else the prompt."""
    if not await ask_key_if_needed(message, state, provider, key_state=Deploy.key):
        await _ask_prompt(message, state)


async def no_key_needed(query: CallbackQuery, state: FSMContext) -> None:
    await query.answer()
    assert isinstance(query.message, Message)
    await _ask_prompt(query.message, state)


async def model_step_hint(message: Message) -> None:
    await message.answer(texts.CHOOSE_MODEL_HINT)


async def model_step_hint_typed(message: Message) -> None:
    await message.answer(texts.MODEL_NAME_HINT)


async def endpoint_step_hint(message: Message) -> None:
    await message.answer(texts.ASK_ENDPOINT)


async def pasted_key(
    message: Message, state: FSMContext, vault: Vault, providers: tuple[Provider, ...]
) -> None:
    await _delete_quietly(message)
    data = await state.get_data()
    provider = find_provider(providers, str(data.get("provider")))
    if provider is None:
        await state.clear()
        await message.answer(texts.CANCELLED)
        return
    key = (message.text or "").strip()
    if provider.is_custom:  # only the gateway connects to a user's endpoint
        await state.update_data(key=vault.encrypt(key))
        await _ask_prompt(message, state)
        return
    verdict = await check_key(provider, key)
    if verdict is KeyCheck.REJECTED:
        await message.answer(texts.KEY_REJECTED.format(provider=provider.label))
        return
    if verdict is KeyCheck.UNREACHABLE:
        await message.answer(texts.KEY_UNREACHABLE.format(provider=provider.label))
        return
    await state.update_data(key=vault.encrypt(key))
    await _ask_prompt(message, state)


async def key_step_hint(message: Message) -> None:
    await message.answer(texts.KEY_HINT)


async def _ask_prompt(message: Message, state: FSMContext) -> None:
    await state.set_state(Deploy.prompt)
    await message.answer(
        texts.ASK_PROMPT.format(limit=MAX_PROMPT_CHARS), reply_markup=keyboards.presets()
    )


async def typed_prompt(message: Message, state: FSMContext) -> None:
    prompt = (message.text or "").strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        await message.answer(
            texts.PROMPT_TOO_LONG.format(length=len(prompt), limit=MAX_PROMPT_CHARS)
        )
        return
    await _show_summary(message, state, prompt)


async def picked_preset(
    query: CallbackQuery, callback_data: WizardAction, state: FSMContext
) -> None:
    if not 0 <= callback_data.value < len(texts.PRESETS):
        await query.answer(texts.NOT_FOUND, show_alert=True)
        return
    await query.answer()
    assert isinstance(query.message, Message)
    await _show_summary(query.message, state, texts.PRESETS[callback_data.value][1])


async def prompt_step_hint(message: Message) -> None:
    await message.answer(texts.PROMPT_HINT)


async def _show_summary(message: Message, state: FSMContext, prompt: str) -> None:
    data = await state.update_data(prompt=prompt)
    await state.set_state(Deploy.confirm)
    await message.answer(
        texts.summary(username=data["username"], model=data["model"], prompt=prompt),
        reply_markup=keyboards.confirm_deploy(),
    )


async def edit_prompt(query: CallbackQuery, state: FSMContext) -> None:
    await query.answer()
    assert isinstance(query.message, Message)
    await _ask_prompt(query.message, state)


async def deploy(query: CallbackQuery, state: FSMContext, deployer: Deployer, vault: Vault) -> None:
    """Runs the deploy, editing one progress message as steps complete."""
    await query.answer()
    assert isinstance(query.message, Message)
    wait = await deployer.deploy_wait(query.from_user.id)
    if wait:  # the summary stays: they can tap Deploy again later
        await query.message.answer(texts.DEPLOY_THROTTLED.format(minutes=-(-wait // 60)))
        return
    await state.set_state(Deploy.deploying)
    data = await state.get_data()
    steps = [str(step) for step in deployer.steps]
    done: list[str] = []
    progress_message = await query.message.answer(texts.progress(done, steps))

    async def report(step: DeployStep) -> None:
        done.append(str(step))
        # A nicety: a 429 or a network error on an edit skips it (the next one catches up).
        with contextlib.suppress(TelegramAPIError):
            await progress_message.edit_text(texts.progress(done, steps))

    request = NewAgent(
        owner_id=query.from_user.id,
        bot_token=vault.decrypt(data["token"]),
        provider=data["provider"],
        model=data["model"],
        system_prompt=data["prompt"],
        llm_api_key=vault.decrypt(data["key"]) if data.get("key") else None,
        managed=bool(data.get("managed")),
        llm_base_url=data.get("endpoint"),
        chat_id=progress_message.chat.id,
        progress_message_id=progress_message.message_id,
    )
    await state.clear()
    # A deploy can take a minute (image pulls): run it beside the dispatcher, so the
    # user's other messages are not held up behind it.
    task = asyncio.create_task(_deploy(query.message, progress_message, request, report, deployer))
    _running.add(task)
    task.add_done_callback(_running.discard)


_running: set[asyncio.Task[None]] = set()


async def _deploy(
    message: Message, progress_message: Message, request: NewAgent, report: Progress,
    deployer: Deployer,
) -> None:  # fmt: skip
    """The deploy in the background: whatever happens ends in a message (a task's
    exception would otherwise vanish, with "Deploying…" frozen on screen)."""
    try:
        await _deploy_and_tell(message, progress_message, request, report, deployer)
    except Exception:
        reference = new_request_id()
        log.exception("deploy in the background failed ref=%s", reference)
        with contextlib.suppress(TelegramAPIError):
            await progress_message.edit_text(texts.ERROR.format(reference=reference))


async def _deploy_and_tell(
    message: Message, progress_message: Message, request: NewAgent, report: Progress,
    deployer: Deployer,
) -> None:  # fmt: skip
    try:
        agent = await deployer.deploy(request, progress=report)
    except DeployFailed as failure:
        await progress_message.edit_text(
            texts.DEPLOY_FAILED.format(
                step=texts.STEP_LABELS.get(failure.step, failure.step), hint=failure.hint
            )
        )
        return
    except (InvalidBotToken, InvalidAgentConfig) as error:
        await progress_message.edit_text(texts.ACTION_FAILED.format(hint=str(error)))
        return
    except BotAlreadyUsed as error:
        await progress_message.edit_text(texts.BOT_IN_USE.format(username=str(error)))
        return
    except QuotaReached as error:
        await progress_message.edit_text(texts.QUOTA.format(limit=error.limit))
        return
    except DeployThrottled as error:
        minutes = -(-error.retry_in // 60)
        await progress_message.edit_text(texts.DEPLOY_THROTTLED.format(minutes=minutes))
        return
    await message.answer(texts.DEPLOYED.format(username=agent.bot_username))
    await send_card(message, agent, budgets=None)


async def confirm_step_hint(message: Message) -> None:
    await message.answer(texts.DEPLOY_HINT)


def build_router() -> Router:
    """A fresh Router (a Router belongs to one Dispatcher; tests and restarts build several)."""
    router = Router(name="deploy")
    router.message.register(start_wizard, Command("deploy"))
    router.managed_bot.register(managed_bot_update)
    router.message.register(managed_bot_created, Deploy.bot, F.managed_bot_created)
    router.message.register(wants_to_paste, Deploy.bot, F.text == texts.HAVE_BOT_BUTTON)
    router.message.register(bot_step_hint, Deploy.bot)
    router.message.register(pasted_token, Deploy.token, F.text)
    router.message.register(token_step_hint, Deploy.token)
    router.callback_query.register(picked_model, Deploy.model, ModelChoice.filter())
    router.message.register(model_step_hint, Deploy.model)
    router.message.register(typed_endpoint, Deploy.endpoint, F.text, ~F.text.startswith("/"))
    router.message.register(typed_model_name, Deploy.model_name, F.text, ~F.text.startswith("/"))
    router.message.register(endpoint_step_hint, Deploy.endpoint)
    router.message.register(model_step_hint_typed, Deploy.model_name)
    router.callback_query.register(
        no_key_needed, Deploy.key, WizardAction.filter(F.action == "nokey")
    )
    router.message.register(pasted_key, Deploy.key, F.text)
    router.message.register(key_step_hint, Deploy.key)
    router.message.register(typed_prompt, Deploy.prompt, F.text, ~F.text.startswith("/"))
    router.callback_query.register(
        picked_preset, Deploy.prompt, WizardAction.filter(F.action == "preset")
    )
    router.message.register(prompt_step_hint, Deploy.prompt)
    router.callback_query.register(
        edit_prompt, Deploy.confirm, WizardAction.filter(F.action == "edit")
    )
    router.callback_query.register(
        deploy, Deploy.confirm, WizardAction.filter(F.action == "deploy")
    )
    router.message.register(confirm_step_hint, Deploy.confirm)
    router.message.register(confirm_step_hint, Deploy.deploying)
    return router
