"""The steps of choosing a model that the deploy wizard and the card's "Change model"
share: the typed model id and the user's own endpoint (no Router of its own)."""

from __future__ import annotations

from html import escape

from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State
from aiogram.types import Message

from manager_bot import keyboards, texts
from manager_bot.gateway.endpoints import EndpointGuard, EndpointRefused, normalize_base_url
from manager_bot.services.providers import Provider, find_provider, is_model_id
from manager_bot.views.errors import refusal

OWN_ENDPOINT_EXAMPLE = "llama3.1:8b"


def model_name_question(provider: Provider | None) -> str:
    """Asks for a model id; `None` is the user's own endpoint."""
    if provider is None:
        return texts.ASK_MODEL_NAME.format(
            provider=texts.OWN_ENDPOINT_NAME, example=OWN_ENDPOINT_EXAMPLE
        )
    example = provider.models[-1] if provider.models else OWN_ENDPOINT_EXAMPLE
    return texts.ASK_MODEL_NAME.format(provider=escape(provider.label), example=escape(example))


async def checked_endpoint(text: str, guard: EndpointGuard) -> str:
    """The endpoint's base URL, checked for shape and address now for early words; the
    gateway checks it again on every request (it is the only one that connects to it).
    Raises EndpointRefused with a reason fit to show."""
    url = normalize_base_url(text)
    await guard.check_resolved(url)
    return url


async def ask_for_details(
    message: Message, state: FSMContext, provider: Provider, model: str, *,
    endpoint_state: State, model_name_state: State,
) -> bool:  # fmt: skip
    """After a model button: ask for the endpoint ("My own endpoint") or the model id
    ("Other model…"); False when the button named the model, so nothing is asked."""
    if provider.is_custom:
        await state.set_state(endpoint_state)
        await message.answer(texts.ASK_ENDPOINT)
    elif not model:
        await state.set_state(model_name_state)
        await message.answer(model_name_question(provider))
    else:
        return False
    return True


async def take_endpoint(
    message: Message, state: FSMContext, guard: EndpointGuard, *, next_state: State
) -> None:
    """A typed endpoint URL: refused with the reason, or stored and the model id asked."""
    try:
        url = await checked_endpoint(message.text or "", guard)
    except EndpointRefused as refused:
        await message.answer(texts.ENDPOINT_REFUSED.format(reason=refusal(refused)))
        return
    await state.update_data(endpoint=url)
    await state.set_state(next_state)
    await message.answer(model_name_question(None))


async def take_model_name(
    message: Message, state: FSMContext, providers: tuple[Provider, ...]
) -> Provider | None:
    """A typed model id, stored; None when the step is not over (the user was told why)."""
    model = (message.text or "").strip()
    if not is_model_id(model):
        await message.answer(texts.MODEL_NAME_HINT)
        return None
    data = await state.update_data(model=model)
    provider = find_provider(providers, str(data.get("provider")))
    if provider is None:
        await state.clear()
        await message.answer(texts.CANCELLED)
    return provider


async def ask_key_if_needed(
    message: Message, state: FSMContext, provider: Provider, *, key_state: State
) -> bool:
    """Asks for the key the chosen model needs (an own endpoint's may be none); False if
    it needs none."""
    if provider.is_custom:
        await message.answer(texts.ASK_ENDPOINT_KEY, reply_markup=keyboards.no_key())
    elif provider.needs_user_key:
        await message.answer(texts.PASTE_KEY.format(provider=provider.label))
    else:
        return False
    await state.set_state(key_state)
    return True
