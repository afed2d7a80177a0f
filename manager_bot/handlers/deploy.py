"""/deploy: the wizard from "no bot yet" to a live agent.

Steps: get a bot (Managed Bots, or a pasted BotFather token), pick a model
(and give a key if the platform has none for it), write the instructions,
confirm; "« Back" on every step after the first (their order: `deploy_steps`).
Secrets typed into the chat are deleted at once and kept in the wizard state only
encrypted, because that state is stored in the database or Redis; anything shaped
like a token or key typed at another step is deleted too. A command typed
mid-wizard leaves it first (`build_exit_router`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiogram import Bot, F, Router
from aiogram.dispatcher.event.bases import SkipHandler
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.filters import Command, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message, ReplyKeyboardRemove

from manager_bot import texts
from manager_bot.crypto import Vault
from manager_bot.db.models import Agent
from manager_bot.gateway.endpoints import EndpointGuard, EndpointRefused
from manager_bot.handlers import deploy_steps
from manager_bot.handlers.message_filters import HoldsSecret, TypedCommand
from manager_bot.handlers.model_steps import checked_endpoint, take_model_name
from manager_bot.keyboards import ModelChoice, WizardAction, WizardBack, WizardStep
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
from manager_bot.views.errors import explain, refusal
from manager_bot.views.live_card import send_card
from manager_bot.views.live_edits import LiveEdits

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


STEP_STATES: dict[WizardStep, State] = {
    WizardStep.BOT: Deploy.bot,
    WizardStep.TOKEN: Deploy.token,
    WizardStep.MODEL: Deploy.model,
    WizardStep.ENDPOINT: Deploy.endpoint,
    WizardStep.MODEL_NAME: Deploy.model_name,
    WizardStep.KEY: Deploy.key,
    WizardStep.PROMPT: Deploy.prompt,
    WizardStep.CONFIRM: Deploy.confirm,
}


async def _delete_quietly(message: Message) -> None:
    """Remove a message that carried a secret; a failure must not keep the secret around."""
    with contextlib.suppress(TelegramBadRequest):
        await message.delete()


async def leave_for_command(message: Message, state: FSMContext) -> None:
    """A command typed mid-wizard: the wizard ends with a note, and the command goes on.

    aiogram cannot hand an update back to the dispatcher, but SkipHandler lets it carry
    on past this router, to the command's own handler, as if no wizard were running.
    Those later routers still see the state the update arrived with: the wizard's own
    step handlers therefore ignore commands (see `build_router`).
    """
    await state.clear()
    await message.answer(texts.LEFT_WIZARD, reply_markup=ReplyKeyboardRemove())
    raise SkipHandler


async def start_wizard(message: Message, state: FSMContext, bot: Bot, deployer: Deployer) -> None:
    """Starts the wizard (again, when typed mid-wizard), unless the user is at their quota."""
    assert message.from_user is not None
    await state.clear()
    if await deployer.queries.quota_reached(message.from_user.id):
        await message.answer(texts.QUOTA.format(limit=deployer.max_agents_per_user))
        return
    await _show_bot_step(message, state, bot=bot, first_name=message.from_user.first_name)


async def _show_bot_step(message: Message, state: FSMContext, *, bot: Bot, first_name: str) -> None:
    await state.set_state(Deploy.bot)
    me = await bot.me()  # asked once per process: aiogram caches it
    text, keyboard = deploy_steps.bot_step(
        first_name=first_name, can_manage_bots=bool(me.can_manage_bots)
    )
    await message.answer(text, reply_markup=keyboard)


async def _enter(
    step: WizardStep, message: Message, state: FSMContext, providers: tuple[Provider, ...], *,
    edit: bool = False,
) -> None:  # fmt: skip
    """Moves to `step` and shows it: a new message, or `message` edited (going back)."""
    await state.set_state(STEP_STATES[step])
    text, keyboard = deploy_steps.view(step, await state.get_data(), providers)
    if edit:
        try:
            await message.edit_text(text, reply_markup=keyboard)
            return
        except TelegramBadRequest:  # too old to edit, or already showing it: say it anew
            pass
    await message.answer(text, reply_markup=keyboard)


async def went_back(
    query: CallbackQuery, callback_data: WizardBack, state: FSMContext, bot: Bot,
    providers: tuple[Provider, ...],
) -> None:  # fmt: skip
    """« Back: the step before, its message in place of this one; what was entered stays."""
    await query.answer()
    assert isinstance(query.message, Message)
    data = await state.get_data()
    step = deploy_steps.previous(callback_data.step, data, providers)
    if step is WizardStep.BOT:  # a reply keyboard cannot replace inline buttons: a new message
        with contextlib.suppress(TelegramBadRequest):
            await query.message.edit_reply_markup(reply_markup=None)
        await _show_bot_step(query.message, state, bot=bot, first_name=query.from_user.first_name)
        return
    await _enter(step, query.message, state, providers, edit=True)


async def stale_back(query: CallbackQuery) -> None:
    """« Back under a step the user has already left."""
    await query.answer(texts.BACK_STALE)


async def deleted_secret(message: Message, raw_state: str | None) -> None:
    """A token or key where none was asked for: deleted, and the step stays as it was."""
    await _delete_quietly(message)
    at_prompt = raw_state == Deploy.prompt.state
    await message.answer(texts.PROMPT_HAS_SECRET if at_prompt else texts.SECRET_DELETED)


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


async def wants_to_paste(
    message: Message, state: FSMContext, providers: tuple[Provider, ...]
) -> None:
    await _enter(WizardStep.TOKEN, message, state, providers)


async def bot_step_hint(message: Message) -> None:
    await message.answer(texts.CHOOSE_BOT_HINT)


async def pasted_token(
    message: Message, state: FSMContext, deployer: Deployer, vault: Vault,
    providers: tuple[Provider, ...],
) -> None:  # fmt: skip
    """Deletes the message whatever it is (it may be a secret), while the token is checked.
    A token pasted before tapping "I already have a bot" is taken all the same."""
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
    await message.answer(
        texts.BOT_READY.format(username=identity.username), reply_markup=ReplyKeyboardRemove()
    )
    await _enter(WizardStep.MODEL, message, state, providers)


async def picked_model(
    query: CallbackQuery, callback_data: ModelChoice, state: FSMContext,
    providers: tuple[Provider, ...],
) -> None:  # fmt: skip
    provider = find_provider(providers, callback_data.provider)
    if provider is None or (callback_data.model and callback_data.model not in provider.models):
        await query.answer(texts.NOT_FOUND, show_alert=True)  # forged or stale data
        return
    await query.answer()
    data = await state.update_data(
        provider=provider.name, model=callback_data.model, key=None, endpoint=None
    )
    assert isinstance(query.message, Message)
    step = deploy_steps.following(WizardStep.MODEL, data, providers)
    await _enter(step, query.message, state, providers)


async def typed_endpoint(
    message: Message, state: FSMContext, endpoint_guard: EndpointGuard,
    providers: tuple[Provider, ...],
) -> None:  # fmt: skip
    """The endpoint's URL: refused with the reason, or kept and the model's id asked."""
    try:
        url = await checked_endpoint(message.text or "", endpoint_guard)
    except EndpointRefused as refused:
        await message.answer(texts.ENDPOINT_REFUSED.format(reason=refusal(refused)))
        return
    await state.update_data(endpoint=url)
    await _enter(WizardStep.MODEL_NAME, message, state, providers)


async def typed_model_name(
    message: Message, state: FSMContext, providers: tuple[Provider, ...]
) -> None:
    if await take_model_name(message, state, providers) is None:
        return
    step = deploy_steps.following(WizardStep.MODEL_NAME, await state.get_data(), providers)
    await _enter(step, message, state, providers)


async def no_key_needed(
    query: CallbackQuery, state: FSMContext, providers: tuple[Provider, ...]
) -> None:
    await query.answer()
    assert isinstance(query.message, Message)
    await state.update_data(key=None)  # one pasted before going back is dropped
    await _enter(WizardStep.PROMPT, query.message, state, providers)


async def model_step_hint(message: Message) -> None:
    await message.answer(texts.CHOOSE_MODEL_HINT)


async def model_step_hint_typed(message: Message) -> None:
    await message.answer(texts.MODEL_NAME_HINT)


async def endpoint_step_hint(message: Message) -> None:
    await message.answer(texts.ASK_ENDPOINT)


async def pasted_key(
    message: Message, state: FSMContext, vault: Vault, providers: tuple[Provider, ...]
) -> None:
    """Deletes the key's message; the key is checked with the provider while the user
    reads "Checking your key…", which then turns into the verdict."""
    data = await state.get_data()
    provider = find_provider(providers, str(data.get("provider")))
    key = (message.text or "").strip()
    if provider is None or provider.is_custom:
        await _delete_quietly(message)
        if provider is None:  # removed from the configuration meanwhile
            await state.clear()
            await message.answer(texts.CANCELLED)
            return
        # Only the gateway connects to a user's endpoint: its key is not checked here.
        await state.update_data(key=vault.encrypt(key))
        await _enter(WizardStep.PROMPT, message, state, providers)
        return
    await _delete_quietly(message)
    checking = await message.answer(texts.CHECKING_KEY)  # the check may take seconds
    verdict = await check_key(provider, key)
    if verdict is KeyCheck.REJECTED:
        await checking.edit_text(texts.KEY_REJECTED.format(provider=provider.label))
        return
    if verdict is KeyCheck.UNREACHABLE:
        await checking.edit_text(texts.KEY_UNREACHABLE.format(provider=provider.label))
        return
    await state.update_data(key=vault.encrypt(key))
    await checking.edit_text(texts.KEY_ACCEPTED.format(provider=provider.label))
    await _enter(WizardStep.PROMPT, message, state, providers)


async def key_step_hint(message: Message) -> None:
    await message.answer(texts.KEY_HINT)


async def typed_prompt(
    message: Message, state: FSMContext, providers: tuple[Provider, ...]
) -> None:
    prompt = (message.text or "").strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        await message.answer(
            texts.PROMPT_TOO_LONG.format(length=len(prompt), limit=MAX_PROMPT_CHARS)
        )
        return
    await state.update_data(prompt=prompt)
    await _enter(WizardStep.CONFIRM, message, state, providers)


async def picked_preset(
    query: CallbackQuery, callback_data: WizardAction, state: FSMContext,
    providers: tuple[Provider, ...],
) -> None:  # fmt: skip
    if not 0 <= callback_data.value < len(texts.PRESETS):
        await query.answer(texts.NOT_FOUND, show_alert=True)
        return
    await query.answer()
    assert isinstance(query.message, Message)
    await state.update_data(prompt=texts.PRESETS[callback_data.value][1])
    await _enter(WizardStep.CONFIRM, query.message, state, providers)


async def prompt_step_hint(message: Message) -> None:
    await message.answer(texts.PROMPT_HINT)


async def edit_prompt(
    query: CallbackQuery, state: FSMContext, providers: tuple[Provider, ...]
) -> None:
    await query.answer()
    assert isinstance(query.message, Message)
    await _enter(WizardStep.PROMPT, query.message, state, providers)


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
    edits = LiveEdits(progress_message)

    async def report(step: DeployStep) -> None:
        done.append(str(step))
        edits.show(texts.progress(done, steps))

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
    task = asyncio.create_task(
        _deploy(query.message, progress_message, request, report, edits, deployer)
    )
    _running.add(task)
    task.add_done_callback(_running.discard)


_running: set[asyncio.Task[None]] = set()


async def _deploy(
    message: Message, progress_message: Message, request: NewAgent, report: Progress,
    edits: LiveEdits, deployer: Deployer,
) -> None:  # fmt: skip
    """The deploy in the background: whatever happens ends in a message (a task's
    exception would otherwise vanish, with "Deploying…" frozen on screen)."""
    try:
        await _deploy_and_tell(message, progress_message, request, report, edits, deployer)
    except Exception:
        reference = new_request_id()
        log.exception("deploy in the background failed ref=%s", reference)
        with contextlib.suppress(TelegramAPIError):
            await progress_message.edit_text(texts.ERROR.format(reference=reference))


async def _deploy_and_tell(
    message: Message, progress_message: Message, request: NewAgent, report: Progress,
    edits: LiveEdits, deployer: Deployer,
) -> None:  # fmt: skip

    async def announce(agent: Agent) -> None:
        # Through flood control, like every reply (manager_bot/flood_control.py): a fast
        # deploy says a lot in one chat at once. The deploy is closed only once this is
        # said: a manager killed before says it at its next start.
        await edits.settled()  # the last progress edit lands before the outcome is said
        await message.answer(texts.DEPLOYED.format(username=agent.bot_username))
        await send_card(message, agent, budgets=None)

    try:
        try:
            await deployer.deploy(request, progress=report, announce=announce)
        finally:
            await edits.settled()
    except DeployFailed as failure:
        ending = texts.DEPLOY_FAILED.format(
            step=texts.STEP_LABELS.get(failure.step, failure.step), reason=explain(failure)
        )
    except (InvalidBotToken, InvalidAgentConfig) as error:
        ending = texts.ACTION_REFUSED.format(reason=refusal(error))
    except BotAlreadyUsed as error:
        ending = texts.BOT_IN_USE.format(username=str(error))
    except QuotaReached as error:
        ending = texts.QUOTA.format(limit=error.limit)
    except DeployThrottled as error:
        ending = texts.DEPLOY_THROTTLED.format(minutes=-(-error.retry_in // 60))
    else:
        return
    await progress_message.edit_text(ending)


async def confirm_step_hint(message: Message) -> None:
    await message.answer(texts.DEPLOY_HINT)


def build_exit_router() -> Router:
    """Included before every feature Router (after /cancel's): a command typed mid-wizard,
    /help as much as /agents, leaves the wizard before its own handler runs. /deploy
    starts the wizard over instead, and /cancel keeps its own words."""
    router = Router(name="deploy-exit")
    router.message.register(
        leave_for_command, StateFilter(Deploy), TypedCommand(), ~Command("deploy", "cancel")
    )
    return router


def build_router() -> Router:
    """A fresh Router (a Router belongs to one Dispatcher; tests and restarts build several)."""
    router = Router(name="deploy")
    router.message.register(start_wizard, Command("deploy"))
    router.managed_bot.register(managed_bot_update)
    steps = Router(name="deploy-steps")
    router.include_router(steps)
    # A command typed mid-wizard was let through by `leave_for_command`, which cleared the
    # state; the state filters here still see the old one, so commands pass them by.
    steps.message.filter(~TypedCommand())
    getting_bot = StateFilter(Deploy.bot, Deploy.token)
    steps.message.register(managed_bot_created, getting_bot, F.managed_bot_created)
    steps.message.register(wants_to_paste, getting_bot, F.text == texts.lazy(texts.HAVE_BOT_BUTTON))
    steps.message.register(pasted_token, Deploy.bot, F.text, F.text.func(looks_like_token))
    steps.message.register(pasted_token, Deploy.token, F.text)
    steps.message.register(pasted_key, Deploy.key, F.text)
    # Where no secret is asked for, one pasted all the same is deleted before anything else.
    steps.message.register(deleted_secret, StateFilter(Deploy), HoldsSecret())
    steps.message.register(bot_step_hint, Deploy.bot)
    steps.message.register(token_step_hint, Deploy.token)
    steps.message.register(model_step_hint, Deploy.model)
    steps.message.register(typed_endpoint, Deploy.endpoint, F.text, ~F.text.startswith("/"))
    steps.message.register(typed_model_name, Deploy.model_name, F.text, ~F.text.startswith("/"))
    steps.message.register(endpoint_step_hint, Deploy.endpoint)
    steps.message.register(model_step_hint_typed, Deploy.model_name)
    steps.message.register(key_step_hint, Deploy.key)
    steps.message.register(typed_prompt, Deploy.prompt, F.text, ~F.text.startswith("/"))
    steps.message.register(prompt_step_hint, Deploy.prompt)
    steps.message.register(confirm_step_hint, Deploy.confirm)
    steps.message.register(confirm_step_hint, Deploy.deploying)

    steps.callback_query.register(picked_model, Deploy.model, ModelChoice.filter())
    steps.callback_query.register(
        no_key_needed, Deploy.key, WizardAction.filter(F.action == "nokey")
    )
    steps.callback_query.register(
        picked_preset, Deploy.prompt, WizardAction.filter(F.action == "preset")
    )
    steps.callback_query.register(
        edit_prompt, Deploy.confirm, WizardAction.filter(F.action == "edit")
    )
    steps.callback_query.register(deploy, Deploy.confirm, WizardAction.filter(F.action == "deploy"))
    for step, step_state in STEP_STATES.items():
        steps.callback_query.register(went_back, step_state, WizardBack.filter(F.step == step))
    steps.callback_query.register(stale_back, WizardBack.filter())
    return router
