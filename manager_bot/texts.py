"""Every word the manager bot says, in one place (HTML parse mode)."""

from __future__ import annotations

from html import escape

from manager_bot.db.models import Agent, as_utc, utcnow
from manager_bot.services.budgets import Spend

WELCOME = (
    "👋 Hi! I'm Hatchbot. I turn a prompt into a live AI bot on Telegram.\n"
    "1. /deploy — get a new bot and pick a model.\n"
    "2. Write what it should do; I launch it and watch its health.\n"
    "3. /agents — run, restart or edit your bots from this chat."
)
HELP = (
    "/deploy — create a new AI bot\n"
    "/agents — your bots\n"
    "/status, /restart, /stop, /resume, /logs, /delete — manage one bot "
    "(add its name, or pick from a list)\n"
    "/cancel — leave what you are doing"
)
UNKNOWN = "I don't know that one. /help lists what I can do."
CANCELLED = "Cancelled. Nothing was changed."
NOTHING_TO_CANCEL = "There is nothing to cancel."
NOT_FOUND = "Agent not found."
DEPLOY_THROTTLED = (
    "That's a lot of deploys in a short time. Please try again in {minutes} min "
    "(your summary is kept: tap Deploy then)."
)
SLOW_DOWN = "Easy there! Please wait a few seconds and try again."
ERROR = "Sorry, something went wrong on my side. Reference: <code>{reference}</code>"

# -- deploy wizard ----------------------------------------------------------------
CREATE_BOT_BUTTON = "🤖 Create a new bot"
HAVE_BOT_BUTTON = "🔑 I already have a bot"
CANCEL_BUTTON = "✖️ Cancel"
CHOOSE_BOT = (
    "Let's make your AI bot.\n\n"
    "Tap <b>Create a new bot</b>: Telegram creates it for you in two taps.\n"
    "Already made one with @BotFather? Tap <b>I already have a bot</b>."
)
CHOOSE_BOT_PASTE_ONLY = (
    "Let's make your AI bot.\n\n"
    "Create one with /newbot in @BotFather, then tap <b>I already have a bot</b> and "
    "paste its token."
)
CHOOSE_BOT_HINT = "Please tap one of the buttons below, or /cancel."
WIZARD_BACK_BUTTON = "« Back"
BACK_STALE = "That step is already behind you: use the newest message."
LEFT_WIZARD = "Left the deploy wizard."
SECRET_DELETED = "🔒 I deleted your message for safety: it looked like a token or API key."
PROMPT_HAS_SECRET = (
    "🔒 I deleted your message for safety: it holds what looks like a token or API key, "
    "and your bot's users could coax it out. Send the instructions without it."
)
PASTE_TOKEN = (
    "Paste the bot's token from @BotFather (it looks like <code>123456:ABC-DEF…</code>).\n"
    "I delete your message right away."
)
TOKEN_SHAPE = "That doesn't look like a bot token. Copy it from @BotFather and paste it here."
TOKEN_INVALID = (
    "Telegram says this token is invalid or revoked. Get a fresh one with /token in "
    "@BotFather and paste it here."
)
TOKEN_UNREACHABLE = (
    "I couldn't reach Telegram to check the token. Please paste it again in a moment."
)
BOT_IN_USE = "@{username} already runs as an agent. Pick another bot, or /cancel."
QUOTA = "You already have {limit} agents, the most allowed. Delete one in /agents first."
BOT_READY = "Got it: @{username}."
PICK_MODEL = "Now pick the AI model (🔑 = bring your own key):"
CHOOSE_MODEL_HINT = "Please pick a model with the buttons above, or /cancel."
PASTE_KEY = (
    "{provider} needs your own API key. Paste it here; I delete your message right away "
    "and store the key encrypted."
)
CHECKING_KEY = "Checking your key…"
KEY_ACCEPTED = "✅ {provider} accepted the key."
KEY_REJECTED = "{provider} rejected that key. Check it and paste it again, or /cancel."
KEY_UNREACHABLE = "I couldn't reach {provider} to check the key. Paste it again in a moment."
KEY_HINT = "Please paste the API key as text, or /cancel."
OTHER_MODEL_BUTTON = "✍️ Other {provider} model…"
OWN_ENDPOINT_BUTTON = "🔌 My own endpoint (OpenAI-compatible)…"
ASK_MODEL_NAME = (
    "Type the model's id exactly as {provider} names it (for example <code>{example}</code>)."
)
MODEL_NAME_HINT = (
    "That isn't a model id: letters, digits and . _ : / @ + - only, up to 128 characters. "
    "Try again, or /cancel."
)
ASK_ENDPOINT = (
    "Send the base URL of your OpenAI-compatible endpoint, for example "
    "<code>https://openrouter.ai/api/v1</code> (Ollama, vLLM and OpenRouter all work)."
)
ENDPOINT_REFUSED = "I can't use that URL: {reason}. Send another, or /cancel."
ASK_ENDPOINT_KEY = (
    "Paste the endpoint's API key (I delete your message right away and store it "
    "encrypted), or tap the button if it needs none."
)
NO_KEY_BUTTON = "It needs no key"
ASK_PROMPT = (
    "Last step: tell me what your bot should do, in your own words "
    "(up to {limit} characters), or pick a preset:"
)
PROMPT_TOO_LONG = "That's {length} characters; the limit is {limit}. Please shorten it."
PROMPT_HINT = "Please send the instructions as a text message, or pick a preset."
SUMMARY = (
    "<b>Ready to deploy</b>\n"
    "Bot: @{username}\n"
    "Model: {model}\n"
    "Instructions:\n<blockquote>{prompt}</blockquote>"
)
DEPLOY_BUTTON = "🚀 Deploy"
EDIT_PROMPT_BUTTON = "✏️ Edit instructions"
DEPLOY_HINT = "Tap Deploy, Edit or Cancel above."
STEP_LABELS = {
    "secret": "Secrets stored",
    "workload": "Agent started",
    "route": "Route created",
    "webhook": "Webhook set",
    "ready": "Agent ready",
}
DEPLOY_FAILED = "❌ Deploy failed at <b>{step}</b>: {reason}\nNothing was left behind."
DEPLOYED = "🎉 @{username} is live! Open it: https://t.me/{username}"
DEPLOY_INTERRUPTED = (
    "⚠️ The deploy was interrupted by a restart on our side before your bot was made. "
    "Nothing was changed: /deploy to try again."
)
RECOVERED = (
    "✅ Your “{action}” of @{username} was interrupted by a restart on our side; it is done now."
)
RECOVERED_LATER = (
    "⏳ Your “{action}” of @{username} was interrupted by a restart on our side; "
    "it will finish as soon as the cluster answers again."
)

PRESETS: tuple[tuple[str, str], ...] = (
    ("Friendly assistant", "You are a friendly, concise assistant. Answer clearly and kindly."),
    ("Translator", "Translate every message into English; if it is English, into Spanish."),
    ("Tutor", "You are a patient tutor. Explain step by step and check understanding."),
)

# -- agents -----------------------------------------------------------------------
NO_AGENTS = "You have no agents yet. /deploy creates one in a minute."
AGENTS = "Your agents:"
PICK_AGENT = "Which agent?"
STATE_ICONS = {
    "running": "🟢",
    "starting": "🟡",
    "crash-looping": "🔴",
    "missing": "🔴",
    "stopped": "⏸",
}
CONFIRM_DELETE = "Delete @{username}? The bot stops answering and its settings are removed."
DELETE_BUTTON = "🗑 Delete"
YES_DELETE_BUTTON = "Yes, delete"
NO_BUTTON = "No"
DELETED = "@{username} was deleted."
RESTARTED = "🔄 @{username} is restarting."
STOPPED = "⏸ @{username} is stopped."
RESUMED = "▶️ @{username} is running again."
REVERTED = "↩️ @{username} is back to its previous settings."
NO_PREVIOUS = "There is no earlier version to go back to."
NO_LOGS = "No log lines yet."
ASK_NEW_PROMPT = "Send the new instructions for @{username} (up to {limit} characters), or /cancel."
PROMPT_CHANGED = "✏️ @{username} has new instructions."
MODEL_CHANGED = "🧠 @{username} now uses {model}."
TOKEN_ROTATED = "🔑 @{username} has a fresh token; the old one no longer works."
ACTION_FAILED = "That didn't work: {hint}. Please try again in a moment."
CARD_BUTTONS = {  # keyed by keyboards.CardAction's values
    "resume": "▶️ Resume",
    "restart": "🔄 Restart",
    "stop": "⏸ Stop",
    "logs": "📜 Logs",
    "prompt": "✏️ Edit prompt",
    "model": "🧠 Change model",
    "revert": "↩️ Revert",
    "rotate": "🔑 Rotate token",
    "access": "👥 Who can talk to it",
    "token": "🔑 Replace token",
    "descr": "📝 Description",
    "delete": DELETE_BUTTON,
    "list": "⬅️ All agents",
}
BACK_BUTTON = "⬅️ Back"
YES_ROTATE_BUTTON = "Yes, rotate"
CONFIRM_ROTATE = (
    "Give @{username} a fresh token? The old one stops working at once; the bot keeps "
    "running with the new one."
)
CHOOSE_NEW_MODEL = "Pick the new model for @{username} (🔑 = bring your own key):"
LOGS_HEADER = "📜 The last log lines of @{username}:"
LOGS_SENT_AS_FILE = "📜 The log is long: it is in the file below."
OUT_OF_DATE = "This menu is out of date."
CARD_WAS_OUT_OF_DATE = "That card was out of date; this is the agent now."
EDIT_EXPIRED = "That edit expired; open the card again (/agents). Nothing was changed."

# -- who can talk to it -----------------------------------------------------------------
ACCESS_SCREEN = "👥 Who can talk to @{username}: {who}\n\nYou can always talk to it yourself."
ACCESS_WHO = {
    "everyone": "everyone",
    "owner": "only you",
    "listed": "you and the users listed ({ids})",
}
ACCESS_MODE_BUTTONS = {
    "everyone": "Everyone",
    "owner": "Only me",
    "listed": "Listed users…",
}
ACCESS_CHANGED = {
    "everyone": "👥 Everyone can talk to @{username} now.",
    "owner": "👥 Only you can talk to @{username} now.",
    "listed": "👥 You and {count} listed user(s) can talk to @{username} now.",
}
ASK_ACCESS_LIST = (
    "Who may talk to @{username}? Send their Telegram user ids (separated by commas, "
    "spaces or new lines), or forward me a message from each person. Then tap Done.\n"
    "You are always let in. /cancel to stop."
)
ACCESS_LIST_SO_FAR = "Listed so far: {ids}. Add more, or tap Done."
ACCESS_REFUSED = "That list can't be used: {reason}."
ACCESS_HIDDEN_USER = (
    "{name} hides their account in forwarded messages, so Telegram doesn't tell me who "
    "they are. Ask them for their user id and send it here."
)
ACCESS_NOT_A_PERSON = (
    "That was forwarded from a chat, a channel or a bot, not a person. Forward a message "
    "they wrote."
)
ACCESS_LIST_HINT = (
    "Send user ids or forward a message from the person, then tap Done. /cancel to stop."
)
ACCESS_LIST_GONE = "That list was not applied (it expired or was cancelled). Nothing was changed."
DONE_BUTTON = "✅ Done"

# -- a pasted bot's new token -------------------------------------------------------------
ASK_NEW_TOKEN = (
    "Paste the new token from @BotFather for @{username} (/token there, or /revoke for a "
    "fresh one). I delete your message right away. /cancel to stop."
)
TOKEN_OF_ANOTHER_BOT = (
    "That token belongs to @{given}, not @{expected}. Paste the token of @{expected}."
)
TOKEN_REPLACED = "🔑 @{username} now runs with its new token."

# -- description ----------------------------------------------------------------------------
DESCRIPTION_SCREEN = (
    "📝 What Telegram shows about @{username} before a chat starts ({source}):\n\n{text}"
)
DESCRIPTION_DERIVED_SOURCE = "the first sentence of its instructions"
DESCRIPTION_OWN_SOURCE = "your own words"
EDIT_DESCRIPTION_BUTTON = "✏️ Edit"
DERIVED_DESCRIPTION_BUTTON = "📄 From the prompt"
ASK_DESCRIPTION = (
    "Send the new description of @{username} (one line, up to {limit} characters), or /cancel."
)
DESCRIPTION_TOO_LONG = (
    "That is {length} characters; Telegram allows {limit}. Shorten it, or /cancel."
)
DESCRIPTION_HINT = "Please send the description as a text message, or /cancel."
DESCRIPTION_CHANGED = "📝 @{username} has a new description."
DESCRIPTION_FROM_PROMPT = (
    "📝 @{username}'s description is the first sentence of its instructions again."
)
PROFILE_PENDING = " Telegram shows it shortly."


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


def spend_line(spend: Spend) -> str:
    """Today, this month, and what is left of today's budget."""
    left = "no daily limit" if spend.left is None else f"{tokens(spend.left)} left today"
    return (
        f"Tokens: {tokens(spend.today.tokens)} today · {tokens(spend.month.tokens)} this month"
        f" · {left}"
    )


USAGE_HEADER = "<b>Usage</b> (tokens; days end at 00:00 UTC)"
USAGE_NONE = "You have no agents yet. /deploy creates one."
USAGE_LINE = "• @{username}: {line}"
BUDGET_80 = (
    "📈 @{username} has used {used} of its {budget} tokens today (80%). At the limit it "
    "answers that it is resting until 00:00 UTC."
)
BUDGET_100 = (
    "⛔ @{username} reached its daily limit of {budget} tokens. It tells its users it is "
    "resting until 00:00 UTC, when the limit resets."
)
OPEN_CARD_BUTTON = "🃏 Open card"
RAISE_LIMIT_BUTTON = "➕ Double today's limit"
LIMIT_RAISED = "➕ @{username} may now use {budget} tokens a day."
BUDGET_USAGE = (
    "Usage: /budget <agent_id or user_id> <tokens a day>, e.g. /budget 42 500000 (0 = no limit)."
)
BUDGET_SET_AGENT = "Daily budget of @{username} set to {budget} tokens."
BUDGET_SET_USER = "Daily budget of every agent of user {user_id} set to {budget} tokens."
BUDGET_NOT_FOUND = "No agent or user {target}."


def budget_notice(*, username: str, percent: int, used: int, budget: int) -> str:
    template = BUDGET_100 if percent >= 100 else BUDGET_80
    return template.format(username=username, used=tokens(used), budget=tokens(budget))


def agent_card(agent: Agent, *, spend: Spend | None = None) -> str:
    state = "stopped" if agent.desired_state == "stopped" else agent.observed_state or "starting"
    since = agent.observed_at.strftime("%Y-%m-%d %H:%M UTC") if agent.observed_at else "—"
    lines = [
        f"{state_icon(agent)} <b>{escape(agent.name)}</b> @{agent.bot_username}",
        f"Model: {escape(agent.provider)} · {escape(agent.model)}",
        f"State: {state} (since {since})",
    ]
    if agent.observed_reason and state != "running":
        lines.append(f"Last error: {escape(agent.observed_reason)}")
    if agent.health and agent.desired_state == "running":
        health = HEALTH_LABELS.get(agent.health, agent.health)
        if agent.health_reason and agent.health != "healthy":
            health += f": {escape(agent.health_reason)}"
        muted_until = agent.muted_until
        muted = " · 🔕 muted" if muted_until and as_utc(muted_until) > utcnow() else ""
        lines.append(f"Health: {health}{muted}")
    if spend is not None:
        lines.append(spend_line(spend))
    lines.append(f"Version: {agent.revision}")
    return "\n".join(lines)


def summary(*, username: str, model: str, prompt: str) -> str:
    shown = prompt if len(prompt) <= 600 else prompt[:600] + "…"
    return SUMMARY.format(username=username, model=escape(model), prompt=escape(shown))


def progress(done: list[str], steps: list[str]) -> str:
    rows = [("✅ " if step in done else "⏳ ") + STEP_LABELS[step] for step in steps]
    return "Deploying…\n" + "\n".join(rows)


# -- health notifications --------------------------------------------------------------
HEALTH_DOWN = "⚠️ @{username} is down: {reason}"
HEALTH_DEGRADED = "⚠️ @{username} has a problem: {reason}"
HEALTH_BACK = "✅ @{username} is back"
HEALTH_GAVE_UP = (
    "⛔ @{username} kept crashing: {reason}. I stopped it so it does not crash forever. "
    "Check its logs, fix the cause (prompt, model or key), then tap Resume."
)
HEALTH_DIGEST = "Several of your bots changed at once:\n{lines}\n\n/agents shows them all."
HEALTH_DIGEST_LINE = "• {line}"
MUTED = "🔕 No health alerts about @{username} for 24 hours."
SWEEP_FAILED = (
    "⚠️ Health checks cannot read the agents: {error}. "
    "I keep trying and will tell you when it works again."
)
ADMIN_ALERT = "🛡 {text}"
SWEEP_RECOVERED = "✅ Health checks work again."
HEALTH_LABELS = {"healthy": "✅ healthy", "degraded": "⚠️ degraded", "down": "🔴 down"}
LOGS_BUTTON = "📜 Logs"
RESTART_BUTTON = "🔄 Restart"
RESUME_BUTTON = "▶️ Resume"
MUTE_BUTTON = "🔕 Mute 24h"


# -- admin console ---------------------------------------------------------------------
ADMIN_HELP = (
    "Admin: /broadcast — message many users · /broadcast_cancel — stop a broadcast · "
    "/stats · /users · /ban &lt;user_id&gt; · /unban &lt;user_id&gt; · /audit"
)
BROADCAST_COMPOSE = (
    "Send the message to broadcast: text (formatting is kept) or a photo with a caption. "
    "/cancel to stop."
)
BROADCAST_COMPOSE_HINT = "A broadcast is text or one photo with a caption. Send one, or /cancel."
BROADCAST_TOO_LONG = "That is {length} characters; Telegram allows {limit}. Shorten it, or /cancel."
BROADCAST_AUDIENCE = "Who should get it?"
AUDIENCE_LABELS = {
    "all": "All users",
    "with_agents": "Users with agents",
    "agent_down": "Users with an agent down",
}
BROADCAST_PREVIEW = "⬆️ This is exactly how it will arrive. Send it to {count} users ({audience})?"
BROADCAST_NOBODY = "Nobody is in that audience right now. Pick another, or /cancel."
BROADCAST_SEND_BUTTON = "📣 Send"
BROADCAST_STARTED = "📣 Broadcast #{id}: sending to {count} users…"
BROADCAST_NONE_RUNNING = "No broadcast is running."
BROADCAST_CANCELLED = "⏹ Stopped broadcast #{ids}."
STATS = (
    "<b>Users</b>: {users} ({banned} banned, {blocked} blocked the bot)\n"
    "<b>Agents</b>: {agents}\n"
    "<b>Deploys</b> last 24 h: {deploys_day_ok} ok, {deploys_day_failed} failed · "
    "last 7 days: {deploys_week_ok} ok, {deploys_week_failed} failed\n"
    "<b>LLM usage</b> (counted by the gateway): today {tokens_day} tokens in "
    "{requests_day} requests · this month {tokens_month} tokens in {requests_month} requests"
)
USERS_PAGE = "<b>Users</b> {first}–{last} of {total}:\n{lines}"
USERS_EMPTY = "No users yet."
USER_LINE = "<code>{id}</code> {name}{flags}: {agents}"
BAN_USAGE = "Usage: /{command} &lt;user_id&gt; (a number; /users lists them)"
BAN_UNKNOWN = "No user {user_id}."
BAN_SELF = "You cannot ban yourself."
BANNED = "🚫 User {user_id} is banned; {stopped} of their agents stopped."
UNBANNED = "✅ User {user_id} may use Hatchbot again (their agents stay stopped until resumed)."
YOU_ARE_BANNED = (
    "Your access to Hatchbot is suspended. Contact the operator if you think this is a mistake."
)
AUDIT_EMPTY = "The audit log is empty."
AUDIT_LINE = "{at} {actor} {action} {agent}{outcome}{detail}"


def broadcast_progress(broadcast_id: int, counts: dict[str, int], seconds: float) -> str:
    done = sum(v for k, v in counts.items() if k not in ("pending", "sending"))
    rate = done / seconds if seconds > 0 else 0.0
    return (
        f"📣 Broadcast #{broadcast_id}: sent {counts.get('sent', 0)}, "
        f"failed {counts.get('failed', 0)}, blocked {counts.get('blocked', 0)}, "
        f"remaining {counts.get('pending', 0) + counts.get('sending', 0)} · {rate:.1f}/s"
    )


def broadcast_report(
    broadcast_id: int, counts: dict[str, int], seconds: float, *, cancelled: bool
) -> str:
    verb = "stopped" if cancelled else "done"
    lines = [
        f"📣 Broadcast #{broadcast_id} {verb} in {seconds:.0f} s: sent {counts.get('sent', 0)}, "
        f"failed {counts.get('failed', 0)}, blocked {counts.get('blocked', 0)}"
    ]
    if counts.get("pending"):
        lines.append(f"Not sent (stopped): {counts['pending']}")
    if counts.get("uncertain"):
        lines.append(
            f"Uncertain (a send cut off mid-way: a stop, or no answer in time; not sent again): {counts['uncertain']}"
        )
    return "\n".join(lines)


# -- failures in plain words (one per services.errors.ErrorCode) -------------------------
FAILURE_WORDS = {
    "cluster-denied": (
        "our servers would not let me set up your bot. That is a problem on our side, "
        "not yours: please tell an admin and quote the reference."
    ),
    "cluster-unavailable": "our servers are busy or unreachable right now. Please try again "
    "in a few minutes.",
    "cluster-rejected": (
        "our servers refused your bot's settings. Please tell an admin and quote the reference."
    ),
    "agent-crashed": (
        "your bot started but keeps stopping. Check its instructions and model and try "
        "again; if it happens again, tell an admin and quote the reference."
    ),
    "agent-changed": "the bot was stopped or deleted while this ran. Open /agents to see it.",
    "token-revoked": (
        "Telegram no longer accepts this bot's token (was it revoked in @BotFather?). "
        "Get a new token from @BotFather and try again."
    ),
    "telegram-unavailable": "Telegram did not answer. Please try again in a minute.",
    "telegram-rejected": (
        "Telegram would not connect your bot to us. Please try again later; if it keeps "
        "happening, tell an admin and quote the reference."
    ),
    "internal": "something went wrong on our side. Please try again in a moment.",
}
ACTION_FAILED_PLAIN = "That didn't work: {reason}"
FAILURE_REFERENCE = "(error <code>{code}</code>, reference <code>{reference}</code>)"
