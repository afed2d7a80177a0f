"""Every word the manager bot says, in one place."""

WELCOME = (
    "👋 Hi! I'm Hatchbot. I turn a prompt into a live AI bot on Telegram.\n"
    "1. /deploy — get a new bot and pick a model.\n"
    "2. Write what it should do; I launch it and watch its health.\n"
    "3. /agents — run, restart or edit your bots from this chat."
)
HELP = (
    "/deploy — create a new AI bot\n"
    "/agents — your bots\n"
    "/status, /restart, /stop, /resume, /logs, /delete — manage one bot\n"
    "/cancel — leave what you are doing"
)
