"""Every word the manager bot says, in one place (HTML parse mode).

Each constant is an English msgid of the gettext catalogue (manager_bot/locales). Read
from outside this module (`texts.WELCOME`) it comes back in the language of the current
update (aiogram's i18n context, see manager_bot/i18n.py), as a plain str: aiogram's
pydantic models take no lazy proxies. Outside any context it is the English text.
Functions here translate with `translate(...)`, since module code reads the raw msgids.
"""

from __future__ import annotations

import sys
from html import escape
from types import ModuleType
from typing import Any

from aiogram.utils.i18n import I18n
from babel.support import LazyProxy

from manager_bot.db.models import Agent, as_utc, utcnow
from manager_bot.services import health_reasons
from manager_bot.services.budgets import Spend


def _(message: str) -> str:
    """Marks an English text for the catalogue (pybabel extract finds `_("...")`)."""
    return message


def translate(message: str) -> str:
    """`message` in the current update's language (English outside an i18n context)."""
    i18n = I18n.get_current(no_error=True)
    return message if i18n is None else i18n.gettext(message)


def current_language() -> str | None:
    """The current update's language (None outside an i18n context: English)."""
    i18n = I18n.get_current(no_error=True)
    return None if i18n is None else i18n.current_locale


def lazy(message: str) -> LazyProxy:
    """`message` translated when compared: for filters made at import time, such as
    `F.text == texts.lazy(texts.CANCEL_BUTTON)` for a reply keyboard's button."""
    return LazyProxy(translate, message)


WELCOME = _(
    "👋 Hi! I'm Hatchbot. I turn a prompt into a live AI bot on Telegram.\n"
    "1. /deploy — get a new bot and pick a model.\n"
    "2. Write what it should do; I launch it and watch its health.\n"
    "3. /agents — run, restart or edit your bots from this chat."
)
HELP = _(
    "/deploy — create a new AI bot\n"
    "/agents — your bots\n"
    "/status, /restart, /stop, /resume, /logs, /delete — manage one bot "
    "(add its name, or pick from a list)\n"
    "/language — English or Russian\n"
    "/cancel — leave what you are doing"
)
UNKNOWN = _("I don't know that one. /help lists what I can do.")
CANCELLED = _("Cancelled. Nothing was changed.")
NOTHING_TO_CANCEL = _("There is nothing to cancel.")
NOT_FOUND = _("Agent not found.")
DEPLOY_THROTTLED = _(
    "That's a lot of deploys in a short time. Please try again in {minutes} min "
    "(your summary is kept: tap Deploy then)."
)
SLOW_DOWN = _("Easy there! Please wait a few seconds and try again.")
ERROR = _("Sorry, something went wrong on my side. Reference: <code>{reference}</code>")

# -- deploy wizard ----------------------------------------------------------------
CREATE_BOT_BUTTON = _("🤖 Create a new bot")
HAVE_BOT_BUTTON = _("🔑 I already have a bot")
CANCEL_BUTTON = _("✖️ Cancel")
CHOOSE_BOT = _(
    "Let's make your AI bot.\n\n"
    "Tap <b>Create a new bot</b>: Telegram creates it for you in two taps.\n"
    "Already made one with @BotFather? Tap <b>I already have a bot</b>."
)
CHOOSE_BOT_PASTE_ONLY = _(
    "Let's make your AI bot.\n\n"
    "Create one with /newbot in @BotFather, then tap <b>I already have a bot</b> and "
    "paste its token."
)
CHOOSE_BOT_HINT = _("Please tap one of the buttons below, or /cancel.")
WIZARD_BACK_BUTTON = _("« Back")
BACK_STALE = _("That step is already behind you: use the newest message.")
LEFT_WIZARD = _("Left the deploy wizard.")
SECRET_DELETED = _("🔒 I deleted your message for safety: it looked like a token or API key.")
PROMPT_HAS_SECRET = _(
    "🔒 I deleted your message for safety: it holds what looks like a token or API key, "
    "and your bot's users could coax it out. Send the instructions without it."
)
PASTE_TOKEN = _(
    "Paste the bot's token from @BotFather (it looks like <code>123456:ABC-DEF…</code>).\n"
    "I delete your message right away."
)
TOKEN_SHAPE = _("That doesn't look like a bot token. Copy it from @BotFather and paste it here.")
TOKEN_INVALID = _(
    "Telegram says this token is invalid or revoked. Get a fresh one with /token in "
    "@BotFather and paste it here."
)
TOKEN_UNREACHABLE = _(
    "I couldn't reach Telegram to check the token. Please paste it again in a moment."
)
BOT_IN_USE = _("@{username} already runs as an agent. Pick another bot, or /cancel.")
QUOTA = _("You already have {limit} agents, the most allowed. Delete one in /agents first.")
BOT_READY = _("Got it: @{username}.")
PICK_MODEL = _("Now pick the AI model (🔑 = bring your own key):")
CHOOSE_MODEL_HINT = _("Please pick a model with the buttons above, or /cancel.")
PASTE_KEY = _(
    "{provider} needs your own API key. Paste it here; I delete your message right away "
    "and store the key encrypted."
)
CHECKING_KEY = _("Checking your key…")
KEY_ACCEPTED = _("✅ {provider} accepted the key.")
KEY_REJECTED = _("{provider} rejected that key. Check it and paste it again, or /cancel.")
KEY_UNREACHABLE = _("I couldn't reach {provider} to check the key. Paste it again in a moment.")
KEY_HINT = _("Please paste the API key as text, or /cancel.")
OTHER_MODEL_BUTTON = _("✍️ Other {provider} model…")
OWN_ENDPOINT_BUTTON = _("🔌 My own endpoint (OpenAI-compatible)…")
ASK_MODEL_NAME = _(
    "Type the model's id exactly as {provider} names it (for example <code>{example}</code>)."
)
MODEL_NAME_HINT = _(
    "That isn't a model id: letters, digits and . _ : / @ + - only, up to 128 characters. "
    "Try again, or /cancel."
)
ASK_ENDPOINT = _(
    "Send the base URL of your OpenAI-compatible endpoint, for example "
    "<code>https://openrouter.ai/api/v1</code> (Ollama, vLLM and OpenRouter all work)."
)
ENDPOINT_REFUSED = _("I can't use that URL: {reason}. Send another, or /cancel.")
ASK_ENDPOINT_KEY = _(
    "Paste the endpoint's API key (I delete your message right away and store it "
    "encrypted), or tap the button if it needs none."
)
NO_KEY_BUTTON = _("It needs no key")
ASK_PROMPT = _(
    "Last step: tell me what your bot should do, in your own words "
    "(up to {limit} characters), or pick a preset:"
)
PROMPT_TOO_LONG = _("That's {length} characters; the limit is {limit}. Please shorten it.")
PROMPT_HINT = _("Please send the instructions as a text message, or pick a preset.")
SUMMARY = _(
    "<b>Ready to deploy</b>\n"
    "Bot: @{username}\n"
    "Model: {model}\n"
    "Instructions:\n<blockquote>{prompt}</blockquote>"
)
DEPLOY_BUTTON = _("🚀 Deploy")
EDIT_PROMPT_BUTTON = _("✏️ Edit instructions")
DEPLOY_HINT = _("Tap Deploy, Edit or Cancel above.")
STEP_LABELS = {
    "secret": _("Secrets stored"),
    "workload": _("Agent started"),
    "route": _("Route created"),
    "webhook": _("Webhook set"),
    "ready": _("Agent ready"),
}
DEPLOY_FAILED = _("❌ Deploy failed at <b>{step}</b>: {reason}\nNothing was left behind.")
DEPLOYED = _("🎉 @{username} is live! Open it: https://t.me/{username}")
DEPLOY_INTERRUPTED = _(
    "⚠️ The deploy was interrupted by a restart on our side before your bot was made. "
    "Nothing was changed: /deploy to try again."
)
RECOVERED = _(
    "✅ Your “{action}” of @{username} was interrupted by a restart on our side; it is done now."
)
RECOVERED_LATER = _(
    "⏳ Your “{action}” of @{username} was interrupted by a restart on our side; "
    "it will finish as soon as the cluster answers again."
)

PRESETS: tuple[tuple[str, str], ...] = (
    (
        _("Friendly assistant"),
        _("You are a friendly, concise assistant. Answer clearly and kindly."),
    ),
    (_("Translator"), _("Translate every message into English; if it is English, into Spanish.")),
    (_("Tutor"), _("You are a patient tutor. Explain step by step and check understanding.")),
)

# -- agents -----------------------------------------------------------------------
NO_AGENTS = _("You have no agents yet. /deploy creates one in a minute.")
AGENTS = _("Your agents:")
PICK_AGENT = _("Which agent?")
STATE_ICONS = {
    "running": "🟢",
    "starting": "🟡",
    "crash-looping": "🔴",
    "missing": "🔴",
    "stopped": "⏸",
}
CONFIRM_DELETE = _("Delete @{username}? The bot stops answering and its settings are removed.")
DELETE_BUTTON = _("🗑 Delete")
YES_DELETE_BUTTON = _("Yes, delete")
NO_BUTTON = _("No")
DELETED = _("@{username} was deleted.")
RESTARTED = _("🔄 @{username} is restarting.")
STOPPED = _("⏸ @{username} is stopped.")
RESUMED = _("▶️ @{username} is running again.")
REVERTED = _("↩️ @{username} is back to its previous settings.")
NO_PREVIOUS = _("There is no earlier version to go back to.")
NO_LOGS = _("No log lines yet.")
ASK_NEW_PROMPT = _(
    "Send the new instructions for @{username} (up to {limit} characters), or /cancel."
)
PROMPT_CHANGED = _("✏️ @{username} has new instructions.")
MODEL_CHANGED = _("🧠 @{username} now uses {model}.")
TOKEN_ROTATED = _("🔑 @{username} has a fresh token; the old one no longer works.")
CARD_BUTTONS = {  # keyed by keyboards.CardAction's values
    "resume": _("▶️ Resume"),
    "restart": _("🔄 Restart"),
    "stop": _("⏸ Stop"),
    "logs": _("📜 Logs"),
    "prompt": _("✏️ Edit prompt"),
    "model": _("🧠 Change model"),
    "revert": _("↩️ Revert"),
    "rotate": _("🔑 Rotate token"),
    "access": _("👥 Who can talk to it"),
    "token": _("🔑 Replace token"),
    "descr": _("📝 Description"),
    "forget": _("🧹 Forget conversations"),
    "delete": DELETE_BUTTON,
    "list": _("⬅️ All agents"),
}
BACK_BUTTON = _("⬅️ Back")
YES_ROTATE_BUTTON = _("Yes, rotate")
CONFIRM_ROTATE = _(
    "Give @{username} a fresh token? The old one stops working at once; the bot keeps "
    "running with the new one."
)
YES_FORGET_BUTTON = _("Yes, forget everything")
CONFIRM_FORGET = _(
    "Make @{username} forget every conversation it has had? Each chat starts fresh, as "
    "after /reset. This cannot be undone."
)
MEMORY_FORGOTTEN = _("🧹 @{username} has forgotten every conversation.")
MEMORY_FORGOTTEN_BY_RESTART = _(
    "🧹 @{username} has forgotten every conversation (it was restarted to forget at once)."
)
CHOOSE_NEW_MODEL = _("Pick the new model for @{username} (🔑 = bring your own key):")
LOGS_HEADER = _("📜 The last log lines of @{username}:")
LOGS_SENT_AS_FILE = _("📜 The log is long: it is in the file below.")
OUT_OF_DATE = _("This menu is out of date.")
CARD_WAS_OUT_OF_DATE = _("That card was out of date; this is the agent now.")
EDIT_EXPIRED = _("That edit expired; open the card again (/agents). Nothing was changed.")

# -- who can talk to it -----------------------------------------------------------------
ACCESS_SCREEN = _("👥 Who can talk to @{username}: {who}\n\nYou can always talk to it yourself.")
ACCESS_WHO = {
    "everyone": _("everyone"),
    "owner": _("only you"),
    "listed": _("you and the users listed ({ids})"),
}
ACCESS_MODE_BUTTONS = {
    "everyone": _("Everyone"),
    "owner": _("Only me"),
    "listed": _("Listed users…"),
}
ACCESS_CHANGED = {
    "everyone": _("👥 Everyone can talk to @{username} now."),
    "owner": _("👥 Only you can talk to @{username} now."),
    "listed": _("👥 You and {count} listed user(s) can talk to @{username} now."),
}
ASK_ACCESS_LIST = _(
    "Who may talk to @{username}? Send their Telegram user ids (separated by commas, "
    "spaces or new lines), or forward me a message from each person. Then tap Done.\n"
    "You are always let in. /cancel to stop."
)
ACCESS_LIST_SO_FAR = _("Listed so far: {ids}. Add more, or tap Done.")
ACCESS_REFUSED = _("That list can't be used: {reason}.")
ACCESS_HIDDEN_USER = _(
    "{name} hides their account in forwarded messages, so Telegram doesn't tell me who "
    "they are. Ask them for their user id and send it here."
)
ACCESS_NOT_A_PERSON = _(
    "That was forwarded from a chat, a channel or a bot, not a person. Forward a message "
    "they wrote."
)
ACCESS_LIST_HINT = _(
    "Send user ids or forward a message from the person, then tap Done. /cancel to stop."
)
ACCESS_LIST_GONE = _(
    "That list was not applied (it expired or was cancelled). Nothing was changed."
)
DONE_BUTTON = _("✅ Done")

# -- a pasted bot's new token -------------------------------------------------------------
ASK_NEW_TOKEN = _(
    "Paste the new token from @BotFather for @{username} (/token there, or /revoke for a "
    "fresh one). I delete your message right away. /cancel to stop."
)
TOKEN_OF_ANOTHER_BOT = _(
    "That token belongs to @{given}, not @{expected}. Paste the token of @{expected}."
)
TOKEN_REPLACED = _("🔑 @{username} now runs with its new token.")

# -- description ----------------------------------------------------------------------------
DESCRIPTION_SCREEN = _(
    "📝 What Telegram shows about @{username} before a chat starts ({source}):\n\n{text}"
)
DESCRIPTION_DERIVED_SOURCE = _("the first sentence of its instructions")
DESCRIPTION_OWN_SOURCE = _("your own words")
EDIT_DESCRIPTION_BUTTON = _("✏️ Edit")
DERIVED_DESCRIPTION_BUTTON = _("📄 From the prompt")
ASK_DESCRIPTION = _(
    "Send the new description of @{username} (one line, up to {limit} characters), or /cancel."
)
DESCRIPTION_TOO_LONG = _(
    "That is {length} characters; Telegram allows {limit}. Shorten it, or /cancel."
)
DESCRIPTION_HINT = _("Please send the description as a text message, or /cancel.")
DESCRIPTION_CHANGED = _("📝 @{username} has a new description.")
DESCRIPTION_FROM_PROMPT = _(
    "📝 @{username}'s description is the first sentence of its instructions again."
)
PROFILE_PENDING = _(" Telegram shows it shortly.")


def state_icon(agent: Agent) -> str:
    if agent.desired_state == "stopped":
        return STATE_ICONS["stopped"]
    return STATE_ICONS.get(agent.observed_state or "starting", "🟡")


def agent_button(agent: Agent) -> str:
    return f"{state_icon(agent)} {agent.name} (@{agent.bot_username})"


def tokens(count: int) -> str:
    """12,345 -> "12.3k": budgets and usage at a glance."""
    if count >= 1_000_000:
        return f"{count / 1_000_000:.1f}M"
    if count >= 10_000:
        return f"{count / 1000:.0f}k"
    if count >= 1000:
        return f"{count / 1000:.1f}k"
    return str(count)


SPEND_NO_LIMIT = _("no daily limit")
SPEND_LEFT = _("{tokens} left today")
SPEND_LINE = _("Tokens: {today} today · {month} this month · {left}")


def spend_line(spend: Spend) -> str:
    """Today, this month, and what is left of today's budget."""
    if spend.left is None:
        left = translate(SPEND_NO_LIMIT)
    else:
        left = translate(SPEND_LEFT).format(tokens=tokens(spend.left))
    return translate(SPEND_LINE).format(
        today=tokens(spend.today.tokens), month=tokens(spend.month.tokens), left=left
    )


USAGE_HEADER = _("<b>Usage</b> (tokens; days end at 00:00 UTC)")
USAGE_NONE = _("You have no agents yet. /deploy creates one.")
USAGE_LINE = _("• @{username}: {line}")
BUDGET_80 = _(
    "📈 @{username} has used {used} of its {budget} tokens today (80%). At the limit it "
    "answers that it is resting until 00:00 UTC."
)
BUDGET_100 = _(
    "⛔ @{username} reached its daily limit of {budget} tokens. It tells its users it is "
    "resting until 00:00 UTC, when the limit resets."
)
OPEN_CARD_BUTTON = _("🃏 Open card")
RAISE_LIMIT_BUTTON = _("➕ Double today's limit")
LIMIT_RAISED = _("➕ @{username} may now use {budget} tokens a day.")
BUDGET_USAGE = _(
    "Usage: /budget <agent_id or user_id> <tokens a day>, e.g. /budget 42 500000 (0 = no limit)."
)
BUDGET_SET_AGENT = _("Daily budget of @{username} set to {budget} tokens.")
BUDGET_SET_USER = _("Daily budget of every agent of user {user_id} set to {budget} tokens.")
BUDGET_NOT_FOUND = _("No agent or user {target}.")


def budget_notice(*, username: str, percent: int, used: int, budget: int) -> str:
    template = translate(BUDGET_100 if percent >= 100 else BUDGET_80)
    return template.format(username=username, used=tokens(used), budget=tokens(budget))


STATE_NAMES = {
    "running": _("running"),
    "starting": _("starting"),
    "crash-looping": _("crash-looping"),
    "missing": _("missing"),
    "stopped": _("stopped"),
}
CARD_MODEL = _("Model: {provider} · {model}")
CARD_STATE = _("State: {state} (since {since})")
CARD_LAST_ERROR = _("Last error: {reason}")
CARD_HEALTH = _("Health: {health}")
CARD_MUTED = _(" · 🔕 muted")
CARD_VERSION = _("Version: {revision}")


def agent_card(agent: Agent, *, spend: Spend | None = None) -> str:
    state = "stopped" if agent.desired_state == "stopped" else agent.observed_state or "starting"
    since = agent.observed_at.strftime("%Y-%m-%d %H:%M UTC") if agent.observed_at else "—"
    state_name = translate(STATE_NAMES[state]) if state in STATE_NAMES else state
    lines = [
        f"{state_icon(agent)} <b>{escape(agent.name)}</b> @{agent.bot_username}",
        translate(CARD_MODEL).format(provider=escape(agent.provider), model=escape(agent.model)),
        translate(CARD_STATE).format(state=state_name, since=since),
    ]
    seen = agent.observed_state
    last_error = observed_words(seen, agent.observed_reason) if state != "running" else None
    if last_error:
        lines.append(translate(CARD_LAST_ERROR).format(reason=escape(last_error)))
    if agent.health and agent.desired_state == "running":
        label = HEALTH_LABELS.get(agent.health)
        health = translate(label) if label else agent.health
        # In plain words from the stable kind; the raw reason is for logs and admins.
        if agent.health != "healthy" and (agent.health_kind or agent.health_reason):
            health += f": {escape(health_words(agent.health_kind, agent.health_reason))}"
        muted_until = agent.muted_until
        if muted_until and as_utc(muted_until) > utcnow():
            health += translate(CARD_MUTED)
        lines.append(translate(CARD_HEALTH).format(health=health))
    if spend is not None:
        lines.append(spend_line(spend))
    lines.append(translate(CARD_VERSION).format(revision=agent.revision))
    return "\n".join(lines)


def summary(*, username: str, model: str, prompt: str) -> str:
    shown = prompt if len(prompt) <= 600 else prompt[:600] + "…"
    return translate(SUMMARY).format(username=username, model=escape(model), prompt=escape(shown))


DEPLOYING = _("Deploying…")


def progress(done: list[str], steps: list[str]) -> str:
    rows = [("✅ " if step in done else "⏳ ") + translate(STEP_LABELS[step]) for step in steps]
    return translate(DEPLOYING) + "\n" + "\n".join(rows)


# -- health notifications --------------------------------------------------------------
HEALTH_DOWN = _("⚠️ @{username} is down: {reason}")
HEALTH_DEGRADED = _("⚠️ @{username} has a problem: {reason}")
HEALTH_BACK = _("✅ @{username} is back")
HEALTH_GAVE_UP = _(
    "⛔ @{username} kept crashing: {reason}. I stopped it so it does not crash forever. "
    "Check its logs, fix the cause (prompt, model or key), then tap Resume."
)
HEALTH_DIGEST = _("Several of your bots changed at once:\n{lines}\n\n/agents shows them all.")
HEALTH_DIGEST_LINE = _("• {line}")
MUTED = _("🔕 No health alerts about @{username} for 24 hours.")
SWEEP_FAILED = _(
    "⚠️ Health checks cannot read the agents: {error}. "
    "I keep trying and will tell you when it works again."
)
ADMIN_ALERT = _("🛡 {text}")
SWEEP_RECOVERED = _("✅ Health checks work again.")
HEALTH_LABELS = {"healthy": _("✅ healthy"), "degraded": _("⚠️ degraded"), "down": _("🔴 down")}
LOGS_BUTTON = _("📜 Logs")
RESTART_BUTTON = _("🔄 Restart")
RESUME_BUTTON = _("▶️ Resume")
MUTE_BUTTON = _("🔕 Mute 24h")


# -- admin console ---------------------------------------------------------------------
ADMIN_HELP = _(
    "Admin: /broadcast — message many users · /broadcast_cancel — stop a broadcast · "
    "/stats · /users · /ban &lt;user_id&gt; · /unban &lt;user_id&gt; · /audit"
)
BROADCAST_COMPOSE = _(
    "Send the message to broadcast: text (formatting is kept) or a photo with a caption. "
    "/cancel to stop."
)
BROADCAST_COMPOSE_HINT = _("A broadcast is text or one photo with a caption. Send one, or /cancel.")
BROADCAST_TOO_LONG = _(
    "That is {length} characters; Telegram allows {limit}. Shorten it, or /cancel."
)
BROADCAST_AUDIENCE = _("Who should get it?")
AUDIENCE_LABELS = {
    "all": _("All users"),
    "with_agents": _("Users with agents"),
    "agent_down": _("Users with an agent down"),
}
BROADCAST_PREVIEW = _(
    "⬆️ This is exactly how it will arrive. Send it to {count} users ({audience})?"
)
BROADCAST_NOBODY = _("Nobody is in that audience right now. Pick another, or /cancel.")
BROADCAST_SEND_BUTTON = _("📣 Send")
BROADCAST_STARTED = _("📣 Broadcast #{id}: sending to {count} users…")
BROADCAST_NONE_RUNNING = _("No broadcast is running.")
BROADCAST_CANCELLED = _("⏹ Stopped broadcast #{ids}.")
STATS = _(
    "<b>Users</b>: {users} ({banned} banned, {blocked} blocked the bot)\n"
    "<b>Agents</b>: {agents}\n"
    "<b>Deploys</b> last 24 h: {deploys_day_ok} ok, {deploys_day_failed} failed · "
    "last 7 days: {deploys_week_ok} ok, {deploys_week_failed} failed\n"
    "<b>LLM usage</b> (counted by the gateway): today {tokens_day} tokens in "
    "{requests_day} requests · this month {tokens_month} tokens in {requests_month} requests"
)
USERS_PAGE = _("<b>Users</b> {first}–{last} of {total}:\n{lines}")
USERS_EMPTY = _("No users yet.")
USER_NO_AGENTS = _("no agents")
USER_LINE = _("<code>{id}</code> {name}{flags}: {agents}")
BAN_USAGE = _("Usage: /{command} &lt;user_id&gt; (a number; /users lists them)")
BAN_UNKNOWN = _("No user {user_id}.")
BAN_SELF = _("You cannot ban yourself.")
BANNED = _("🚫 User {user_id} is banned; {stopped} of their agents stopped.")
UNBANNED = _("✅ User {user_id} may use Hatchbot again (their agents stay stopped until resumed).")
YOU_ARE_BANNED = _(
    "Your access to Hatchbot is suspended. Contact the operator if you think this is a mistake."
)
AUDIT_EMPTY = _("The audit log is empty.")
AUDIT_LINE = _("{at} {actor} {action} {agent}{outcome}{detail}")


BROADCAST_PROGRESS = _(
    "📣 Broadcast #{id}: sent {sent}, failed {failed}, blocked {blocked}, "
    "remaining {remaining} · {rate}/s"
)
BROADCAST_DONE = _(
    "📣 Broadcast #{id} done in {seconds} s: sent {sent}, failed {failed}, blocked {blocked}"
)
BROADCAST_STOPPED = _(
    "📣 Broadcast #{id} stopped in {seconds} s: sent {sent}, failed {failed}, blocked {blocked}"
)
BROADCAST_NOT_SENT = _("Not sent (stopped): {count}")
BROADCAST_UNCERTAIN = _(
    "Uncertain (a send cut off mid-way: a stop, or no answer in time; not sent again): {count}"
)


def broadcast_progress(broadcast_id: int, counts: dict[str, int], seconds: float) -> str:
    done = sum(v for k, v in counts.items() if k not in ("pending", "sending"))
    rate = done / seconds if seconds > 0 else 0.0
    return translate(BROADCAST_PROGRESS).format(
        id=broadcast_id,
        sent=counts.get("sent", 0),
        failed=counts.get("failed", 0),
        blocked=counts.get("blocked", 0),
        remaining=counts.get("pending", 0) + counts.get("sending", 0),
        rate=f"{rate:.1f}",
    )


def broadcast_report(
    broadcast_id: int, counts: dict[str, int], seconds: float, *, cancelled: bool
) -> str:
    template = translate(BROADCAST_STOPPED if cancelled else BROADCAST_DONE)
    lines = [
        template.format(
            id=broadcast_id,
            seconds=f"{seconds:.0f}",
            sent=counts.get("sent", 0),
            failed=counts.get("failed", 0),
            blocked=counts.get("blocked", 0),
        )
    ]
    if counts.get("pending"):
        lines.append(translate(BROADCAST_NOT_SENT).format(count=counts["pending"]))
    if counts.get("uncertain"):
        lines.append(translate(BROADCAST_UNCERTAIN).format(count=counts["uncertain"]))
    return "\n".join(lines)


# -- failures in plain words (one per services.errors.ErrorCode) -------------------------
FAILURE_WORDS = {
    "cluster-denied": (
        _(
            "our servers would not let me set up your bot. That is a problem on our side, "
            "not yours: please tell an admin and quote the reference."
        )
    ),
    "cluster-unavailable": _(
        "our servers are busy or unreachable right now. Please try again in a few minutes."
    ),
    "cluster-rejected": (
        _("our servers refused your bot's settings. Please tell an admin and quote the reference.")
    ),
    "agent-crashed": (
        _(
            "your bot started but keeps stopping. Check its instructions and model and try "
            "again; if it happens again, tell an admin and quote the reference."
        )
    ),
    "agent-changed": _("the bot was stopped or deleted while this ran. Open /agents to see it."),
    "token-revoked": (
        _(
            "Telegram no longer accepts this bot's token (was it revoked in @BotFather?). "
            "Get a new token from @BotFather and try again."
        )
    ),
    "telegram-unavailable": _("Telegram did not answer. Please try again in a minute."),
    "telegram-rejected": (
        _(
            "Telegram would not connect your bot to us. Please try again later; if it keeps "
            "happening, tell an admin and quote the reference."
        )
    ),
    "internal": _("something went wrong on our side. Please try again in a moment."),
}
ACTION_FAILED_PLAIN = _("That didn't work: {reason}")
FAILURE_REFERENCE = _("(error <code>{code}</code>, reference <code>{reference}</code>)")

# -- the command menus, and words the handlers used to spell out ---------------------------
AUDIT_HEADER = _("<b>Audit log</b> (newest first)")
OWN_ENDPOINT_NAME = _("your endpoint")
YOUR_BOT = _("your bot")
COMMANDS = {
    "deploy": _("Create a new AI bot"),
    "agents": _("Your bots"),
    "usage": _("Tokens used and left today"),
    "status": _("State of a bot"),
    "restart": _("Restart a bot"),
    "stop": _("Stop a bot"),
    "resume": _("Start a stopped bot"),
    "logs": _("A bot's recent log"),
    "delete": _("Delete a bot"),
    "language": _("Language: English or Russian"),
    "cancel": _("Leave what you are doing"),
    "help": _("What I can do"),
}
ADMIN_COMMANDS = {
    "broadcast": _("Message many users"),
    "broadcast_cancel": _("Stop a running broadcast"),
    "stats": _("Platform figures"),
    "users": _("Users and their agents"),
    "ban": _("Ban a user: /ban <user_id>"),
    "unban": _("Lift a ban: /unban <user_id>"),
    "audit": _("Recent audit log"),
    "budget": _("Daily token budget: /budget <agent|user> <tokens>"),
}

# -- language ----------------------------------------------------------------------------------
CHOOSE_LANGUAGE = _("Pick the language I speak to you in:")
LANGUAGE_SET = _("Done: I speak English to you now.")
# The buttons name each language in itself, whatever the current one.
LANGUAGE_NAMES = {"en": "English", "ru": "Русский"}


# -- refusals and health in plain words (issue 16, item 3: errors in the user's language) ------
# Each dict is keyed by the values of a code in services/errors.py or
# services/health_reasons.py; views/errors.py and `health_words` pick the words. A
# refusal is a clause for the sentence around it (ACCESS_REFUSED, ENDPOINT_REFUSED,
# ACTION_REFUSED).
ACTION_REFUSED = _("That didn't work: {reason}.")
CONFIG_PROBLEMS = {
    "unknown-provider": _("there is no provider called {provider}"),
    "not-a-model": _("{model} is not a model id"),
    "key-needed": _("{provider} needs your own API key"),
    "endpoint-needed": _("your own endpoint needs its URL"),
    "prompt-empty": _("the instructions are empty"),
    "prompt-too-long": _("the instructions are longer than {limit} characters"),
    "description-too-long": _("the description is longer than {limit} characters"),
    "managed-token": _(
        "a bot Telegram made for you gets a new token with 🔑 Rotate token, not by pasting one"
    ),
}
ACCESS_PROBLEMS = {
    "ids-without-list": _("user ids go only with a list of users"),
    "empty": _("the list of users is empty"),
    "too-many": _("at most {limit} users may be listed"),
    "too-many-for-managed": _(
        "Telegram lets at most {limit} users besides you into a bot it made for you"
    ),
    "not-an-id": _("a Telegram user id is a positive number"),
    "not-numbers": _("Telegram user ids are numbers, like 123456789"),
}
TOKEN_PROBLEMS = {
    "invalid": _(
        "Telegram says the bot's token is invalid or revoked (get a fresh one with /token "
        "in @BotFather)"
    ),
    "unreachable": _("I couldn't reach Telegram to check the token; please try again in a moment"),
    "rejected": _("Telegram refused the request about this bot; please try again later"),
}
ENDPOINT_PROBLEMS = {
    "empty": _("the address is empty"),
    "too-long": _("the address is longer than {limit} characters"),
    "spaces": _("the address must not contain spaces or invisible characters"),
    "not-http": _("the address must start with http:// or https://"),
    "fragment": _("the address must not contain a '#' part"),
    "query": _("the address must not contain a '?' part"),
    "not-a-url": _("this is not a valid web address"),
    "credentials": _(
        "the address must not contain a user name or password (I ask for the key separately)"
    ),
    "no-host": _("the address has no host name"),
    "bad-port": _("the port must be between 1 and 65535"),
    "ipv6-zone": _("the address must not contain an IPv6 zone ('%')"),
    "bad-host": _("the host name is not valid"),
    "private-address": _(
        "{host} is a private, local or reserved address; only public endpoints can be used"
    ),
    "unusual-ip": _(
        "{host} is not a usual IP address: write it as four numbers from 0 to 255 separated by dots"
    ),
    "local-name": _("{host} is a name inside a local network; only public endpoints can be used"),
    "not-full-name": _("{host} is not a full domain name; only public endpoints can be used"),
    "not-found": _("{host} could not be found: check the spelling of the address"),
    "no-address": _("{host} has no address to connect to"),
    "resolves-inside": _(
        "{host} points to a private, local or reserved address; only public endpoints can be used"
    ),
}
HEALTH_WORDS = {
    "ok": _("it works"),
    "missing": _("it is not running on our servers"),
    "stopped": _("it was stopped on our servers"),
    "not_ready": _("it has not started in {minutes} minutes"),
    "not_answering": _("it does not answer its health check"),
    "token": _("Telegram rejects its token (was it revoked in @BotFather?)"),
    "webhook": _("Telegram cannot deliver messages to it"),
    "backlog": _("{count} messages are waiting to be answered"),
    "llm_key": _("the LLM provider rejects its API key"),
    "llm_rate_limit": _("the LLM provider is rate-limiting it"),
}
CRASH_WORDS = {  # crash_loop and gave_up, by services.health_reasons.CrashCause
    "out-of-memory": _("it ran out of memory"),
    "no-image": _(
        "its program could not be downloaded (a problem on our side: please tell an admin)"
    ),
    "cannot-start": _("it could not be started (a problem on our side: please tell an admin)"),
    "crashed": _("it keeps stopping"),
}
RESTARTED_ONCE = _("{cause} and was restarted once")
RESTARTED_TIMES = _("{cause} and was restarted {count} times")
HEALTH_UNKNOWN = _("something is wrong with it")


def crash_words(reason: str | None) -> str:
    """A backend's crash reason ("OOMKilled (restarted 5 times)") in plain words."""
    crash = health_reasons.crash_of(reason)
    cause = translate(CRASH_WORDS[crash.cause])
    if crash.restarts == 1:
        return translate(RESTARTED_ONCE).format(cause=cause)
    if crash.restarts > 1:
        return translate(RESTARTED_TIMES).format(cause=cause, count=crash.restarts)
    return cause


def health_words(kind: str | None, reason: str | None) -> str:
    """A verdict (its HealthKind and raw reason) in plain words; the raw reason itself is
    for logs and admins."""
    if kind in (health_reasons.HealthKind.CRASH_LOOP, health_reasons.HealthKind.GAVE_UP):
        return crash_words(reason)
    words = HEALTH_WORDS.get(kind or "")
    if words is None:
        return translate(HEALTH_UNKNOWN)
    count = health_reasons.count_in(reason)
    return translate(words).format(minutes=count, count=count)


def observed_words(state: str | None, reason: str | None) -> str | None:
    """What the backend last saw go wrong (the card's "Last error"), in plain words."""
    if not reason:
        return None
    if state == "crash-looping":
        return crash_words(reason)
    if state == "missing":
        return translate(HEALTH_WORDS["missing"])
    return None


def _in_language(value: Any) -> Any:
    if isinstance(value, str):
        return translate(value)
    if isinstance(value, dict):
        return {key: _in_language(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_in_language(item) for item in value)
    return value


# (constant, language) -> the constant in that language. A table such as CARD_BUTTONS
# was translated whole, entry by entry, on every read: once per button of a card.
_translations: dict[tuple[str, str | None], Any] = {}


class _Translated(ModuleType):
    """This module, with its UPPER_CASE constants read in the current language (shared,
    translated once per language: read them, never change them)."""

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if not name.isupper():
            return value
        key = (name, current_language())
        if key not in _translations:
            _translations[key] = _in_language(value)
        return _translations[key]


sys.modules[__name__].__class__ = _Translated


# -- tools over MCP: an agent's MCP servers on its card (handlers/agent_tools.py) --------------
TOOLS_BUTTON = _("🔧 Tools")
TOOLS_SCREEN = _(
    "🔧 <b>Tools of @{username}</b>\n\nYour bot can use tools from remote MCP servers "
    "(streamable HTTP). Their addresses and tokens are stored encrypted; your bot "
    "reaches them only through the platform and never sees either.\n\n{servers}"
)
TOOLS_NONE = _("No MCP servers yet.")
TOOLS_LINE = _("• <b>{name}</b> · {host}")
TOOLS_LINE_WITH_TOKEN = _("• <b>{name}</b> · {host} · 🔑 token")
TOOLS_ADD_BUTTON = _("➕ Add MCP server")
TOOLS_REMOVE_BUTTON = _("➖ Remove {name}")
TOOLS_NO_TOKEN_BUTTON = _("No token needed")
TOOLS_ASK_URL = _(
    "Send the URL of the MCP server (streamable HTTP), for example "
    "<code>https://mcp.example.com/mcp</code>."
)
TOOLS_URL_HINT = _("Send the server's URL as text, or /cancel.")
TOOLS_ASK_TOKEN = _(
    "Does the server need a token? Paste it: just the token (sent as "
    "<code>Authorization: Bearer</code>), or <code>Header-Name: value</code> for a "
    "header of its own. I delete your message right away and store the token encrypted."
)
TOOLS_TOKEN_HINT = _("Paste the token as text, tap “No token needed”, or /cancel.")
TOOLS_TOKEN_DELETED = _(
    "🔒 I deleted your message: it may hold a token. Paste the token as text, tap “No "
    "token needed”, or /cancel."
)
TOOLS_ADDED = _("🔧 @{username} can use the tools of <b>{name}</b> now.")
TOOLS_REMOVED = _("🔧 <b>{name}</b> is removed: @{username} no longer uses its tools.")
TOOLS_TOO_MANY = _("An agent can have at most {limit} MCP servers: remove one first.")
TOOLS_DUPLICATE = _("That server is already added, as <b>{name}</b>.")
TOOLS_GONE = _("That server was already removed.")
TOOLS_BAD_TOKEN = _(
    "That doesn't look like a token: send it as plain text on one line, at most {limit} characters."
)
TOOLS_RESERVED_HEADER = _(
    "The header {header} can't carry a token: send just the token, or use the server's "
    "own header, like <code>X-Api-Key: value</code>."
)
CARD_BUTTONS["tools"] = TOOLS_BUTTON  # keyboards.CardAction.TOOLS
