"""The admin console in chat: /broadcast, /broadcast_cancel, /stats, /users, /ban, /unban,
/audit, /budget.

The whole Router is filtered to ADMIN_IDS: for anyone else these commands fall
through to the ordinary "I don't know that one" reply, and their buttons to
"not found".
"""

from __future__ import annotations

from html import escape

from aiogram import Bot, F, Router
from aiogram.filters import Command, CommandObject
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message

from manager_bot import keyboards, texts
from manager_bot.db.repositories import AUDIENCES
from manager_bot.keyboards import AdminAction
from manager_bot.services.admin import USERS_PER_PAGE, AdminConsole
from manager_bot.services.broadcast import Broadcaster, Content
from manager_bot.services.budgets import Budgets
from manager_bot.services.errors import AgentNotFound

TEXT_LIMIT, CAPTION_LIMIT = 4096, 1024


class Compose(StatesGroup):
    message = State()
    audience = State()
    confirm = State()


async def start_broadcast(message: Message, state: FSMContext) -> None:
    await state.set_state(Compose.message)
    await message.answer(texts.BROADCAST_COMPOSE)


async def composed(message: Message, state: FSMContext, broadcaster: Broadcaster) -> None:
    photo = message.photo[-1].file_id if message.photo else None
    html = message.html_text if (message.text or message.caption) else ""
    limit = CAPTION_LIMIT if photo else TEXT_LIMIT
    length = len(message.caption or "") if photo else len(message.text or "")
    if length > limit:
        await message.answer(texts.BROADCAST_TOO_LONG.format(length=length, limit=limit))
        return
    await state.update_data(html=html, photo=photo)
    await state.set_state(Compose.audience)
    sizes = {audience: await broadcaster.audience_size(audience) for audience in AUDIENCES}
    await message.answer(texts.BROADCAST_AUDIENCE, reply_markup=keyboards.audiences(sizes))


async def compose_hint(message: Message) -> None:
    await message.answer(texts.BROADCAST_COMPOSE_HINT)


async def picked_audience(
    query: CallbackQuery, callback_data: AdminAction, state: FSMContext, broadcaster: Broadcaster,
    bot: Bot,
) -> None:  # fmt: skip
    await query.answer()
    if callback_data.value not in AUDIENCES or not isinstance(query.message, Message):
        return
    size = await broadcaster.audience_size(callback_data.value)
    if size == 0:
        await query.message.answer(texts.BROADCAST_NOBODY)
        return
    data = await state.get_data()
    chat_id = query.message.chat.id
    if data.get("photo"):  # the preview is the message itself, sent the same way
        await bot.send_photo(chat_id, data["photo"], caption=data["html"])
    else:
        await bot.send_message(chat_id, data["html"])
    await state.update_data(audience=callback_data.value)
    await state.set_state(Compose.confirm)
    label = texts.AUDIENCE_LABELS[callback_data.value].lower()
    await query.message.answer(
        texts.BROADCAST_PREVIEW.format(count=size, audience=label),
        reply_markup=keyboards.confirm_broadcast(),
    )


async def send(query: CallbackQuery, state: FSMContext, broadcaster: Broadcaster) -> None:
    await query.answer()
    data = await state.get_data()
    await state.clear()
    if not isinstance(query.message, Message) or "audience" not in data:
        return
    progress = await query.message.answer("📣 …")
    broadcast_id, count = await broadcaster.start(
        author_id=query.from_user.id,
        content=Content(data["html"], data.get("photo")),
        audience=data["audience"],
        progress=(progress.chat.id, progress.message_id),
    )
    await progress.edit_text(texts.BROADCAST_STARTED.format(id=broadcast_id, count=count))


async def step_hint(message: Message) -> None:
    await message.answer(texts.BROADCAST_COMPOSE_HINT)


async def cancel_broadcast(message: Message, broadcaster: Broadcaster) -> None:
    assert message.from_user is not None
    stopped = await broadcaster.cancel(actor_id=message.from_user.id)
    if not stopped:
        await message.answer(texts.BROADCAST_NONE_RUNNING)
        return
    await message.answer(texts.BROADCAST_CANCELLED.format(ids=", #".join(map(str, stopped))))


async def stats(message: Message, admin: AdminConsole) -> None:
    assert message.from_user is not None
    figures = await admin.stats(message.from_user.id)
    by_state = figures.pop("agents")
    assert isinstance(by_state, dict)
    agents = ", ".join(
        f"{n} {desired}/{observed}" for (desired, observed), n in sorted(by_state.items())
    )
    await message.answer(texts.STATS.format(agents=agents or "none", **figures))


async def users(message: Message, admin: AdminConsole) -> None:
    assert message.from_user is not None
    await _show_users(message, admin, message.from_user.id, 0, edit=False)


async def users_page(query: CallbackQuery, callback_data: AdminAction, admin: AdminConsole) -> None:
    await query.answer()
    if isinstance(query.message, Message) and callback_data.value.isdigit():
        await _show_users(
            query.message, admin, query.from_user.id, int(callback_data.value), edit=True
        )


async def _show_users(
    message: Message, admin: AdminConsole, actor: int, page: int, *, edit: bool
) -> None:
    found = await admin.users_page(actor, page)
    if not found.users:
        await message.answer(texts.USERS_EMPTY)
        return
    lines = []
    for user in found.users:
        flags = (" 🚫" if user.is_banned else "") + (" 🔇" if user.blocked_bot else "")
        owned = found.agents.get(user.id, [])
        agents = ", ".join(f"{texts.state_icon(a)} @{a.bot_username}" for a in owned) or (
            texts.USER_NO_AGENTS
        )
        name = escape(user.first_name) + (f" @{user.username}" if user.username else "")
        lines.append(texts.USER_LINE.format(id=user.id, name=name, flags=flags, agents=agents))
    first = found.page * USERS_PER_PAGE + 1
    text = texts.USERS_PAGE.format(
        first=first, last=first + len(found.users) - 1, total=found.total, lines="\n".join(lines)
    )
    markup = keyboards.users_pages(found.page, found.pages)
    if edit:
        await message.edit_text(text, reply_markup=markup)
    else:
        await message.answer(text, reply_markup=markup)


async def ban_or_unban(message: Message, command: CommandObject, admin: AdminConsole) -> None:
    assert message.from_user is not None
    user_id = _user_id(command)
    if user_id is None:
        await message.answer(texts.BAN_USAGE.format(command=command.command))
        return
    if command.command == "unban":
        found = await admin.unban(message.from_user.id, user_id)
        reply = texts.UNBANNED.format(user_id=user_id)
    elif user_id == message.from_user.id:
        await message.answer(texts.BAN_SELF)
        return
    else:
        stopped = await admin.ban(message.from_user.id, user_id)
        found = stopped is not None
        reply = texts.BANNED.format(user_id=user_id, stopped=stopped)
    await message.answer(reply if found else texts.BAN_UNKNOWN.format(user_id=user_id))


async def audit(message: Message, admin: AdminConsole) -> None:
    assert message.from_user is not None
    entries = await admin.audit(message.from_user.id)
    if not entries:
        await message.answer(texts.AUDIT_EMPTY)
        return
    lines = [
        texts.AUDIT_LINE.format(
            at=entry.at.strftime("%m-%d %H:%M"),
            actor=entry.actor_id if entry.actor_id is not None else "system",
            action=escape(entry.action),
            agent=f"{entry.agent_id} " if entry.agent_id else "",
            outcome=escape(entry.outcome),
            detail=f" · {escape(entry.detail)}" if entry.detail else "",
        )
        for entry in entries
    ]
    await message.answer(texts.AUDIT_HEADER + "\n" + "\n".join(lines))


async def set_budget(message: Message, command: CommandObject, budgets: Budgets) -> None:
    """/budget <agent_id|user_id> <tokens>: one agent's, or all of a user's agents'."""
    assert message.from_user is not None
    parts = (command.args or "").split()
    if len(parts) != 2 or not parts[1].isdigit() or len(parts[1]) > 12:
        await message.answer(texts.BUDGET_USAGE)
        return
    target, tokens = parts[0][:20], int(parts[1])
    if target.isdigit():
        if await budgets.raise_user(
            actor_id=message.from_user.id, user_id=int(target), tokens=tokens
        ):
            await message.answer(texts.BUDGET_SET_USER.format(user_id=target, budget=tokens))
            return
    else:
        try:
            agent = await budgets.raise_agent(
                actor_id=message.from_user.id, agent_id=target, tokens=tokens
            )
        except AgentNotFound:
            pass
        else:
            await message.answer(
                texts.BUDGET_SET_AGENT.format(username=agent.bot_username, budget=tokens)
            )
            return
    await message.answer(texts.BUDGET_NOT_FOUND.format(target=escape(target)))


async def double_budget(query: CallbackQuery, callback_data: AdminAction, budgets: Budgets) -> None:
    """The button under a budget notice: that agent's daily limit, doubled."""
    try:
        agent, budget = await budgets.double(
            actor_id=query.from_user.id, agent_id=callback_data.value[:16]
        )
    except AgentNotFound:
        await query.answer(texts.NOT_FOUND)
        return
    await query.answer()
    if isinstance(query.message, Message):
        await query.message.answer(
            texts.LIMIT_RAISED.format(username=agent.bot_username, budget=texts.tokens(budget))
        )


def _user_id(command: CommandObject) -> int | None:
    argument = (command.args or "").strip()
    return int(argument) if argument.isdigit() and len(argument) <= 15 else None


def build_router(admin_ids: list[int]) -> Router:
    """A fresh Router (a Router belongs to one Dispatcher; tests and restarts build several)."""
    router = Router(name="admin")
    is_admin = F.from_user.id.in_(set(admin_ids))
    router.message.filter(is_admin)
    router.callback_query.filter(is_admin)
    router.message.register(start_broadcast, Command("broadcast"))
    router.message.register(cancel_broadcast, Command("broadcast_cancel"))
    router.message.register(stats, Command("stats"))
    router.message.register(users, Command("users"))
    router.message.register(ban_or_unban, Command("ban", "unban"))
    router.message.register(audit, Command("audit"))
    router.message.register(set_budget, Command("budget"))
    router.message.register(composed, Compose.message, F.text & ~F.text.startswith("/"))
    router.message.register(composed, Compose.message, F.photo)
    router.message.register(compose_hint, Compose.message)
    router.callback_query.register(
        picked_audience, Compose.audience, AdminAction.filter(F.action == "audience")
    )
    router.message.register(step_hint, Compose.audience)
    router.callback_query.register(send, Compose.confirm, AdminAction.filter(F.action == "send"))
    router.message.register(step_hint, Compose.confirm)
    router.callback_query.register(users_page, AdminAction.filter(F.action == "users"))
    router.callback_query.register(double_budget, AdminAction.filter(F.action == "budget"))
    return router
