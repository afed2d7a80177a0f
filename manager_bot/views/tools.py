"""The screens of an agent's tools (its MCP servers) on its card."""

from __future__ import annotations

from html import escape

from manager_bot import keyboards, texts
from manager_bot.db.models import Agent
from manager_bot.services.agent_tools import ServerView
from manager_bot.views.card import Screen


def tools(
    agent: Agent, servers: list[ServerView], *, max_servers: int, notice: str | None = None
) -> Screen:
    """The servers (name, host, whether a token is kept), Remove each, Add, Back."""
    lines = [
        (texts.TOOLS_LINE_WITH_TOKEN if server.has_token else texts.TOOLS_LINE).format(
            name=server.name, host=escape(server.host)
        )
        for server in servers
    ]
    text = texts.TOOLS_SCREEN.format(
        username=agent.bot_username, servers="\n".join(lines) or texts.TOOLS_NONE
    )
    markup = keyboards.tools(
        agent, [server.name for server in servers], can_add=len(servers) < max_servers
    )
    return Screen(text if notice is None else f"{notice}\n\n{text}", markup)


def ask_url(agent: Agent) -> Screen:
    return Screen(texts.TOOLS_ASK_URL, keyboards.back_to_card(agent))
