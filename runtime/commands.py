"""The commands every agent answers, with the words its menu shows.

One list for two processes: the runtime handles exactly these (runtime/chat.py),
and the manager registers exactly these with setMyCommands, so an agent's menu
never offers a command it does not know. No imports: the manager reads it cheaply.
"""

from __future__ import annotations

START = "start"
RESET = "reset"
HELP = "help"

# command -> its description in the bot's menu (1-256 characters, Telegram's limit)
COMMANDS: dict[str, str] = {
    START: "Start the conversation",
    RESET: "Forget our conversation so far",
    HELP: "How to talk to me",
}
