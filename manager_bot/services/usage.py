"""Reading an agent's usage from its runtime's /metrics (best effort, for the agent card)."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

SAMPLES = {
    "hatchbot_agent_replies_sent_total": "replies",
    "hatchbot_agent_updates_received_total": "updates",
    "hatchbot_agent_prompt_tokens_total": "prompt_tokens",
    "hatchbot_agent_completion_tokens_total": "completion_tokens",
}


def parse_usage(text: str) -> dict[str, float]:
    usage: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in SAMPLES:
                usage[SAMPLES[sample.name]] = sample.value
    return usage


async def fetch_usage(probe_url: str | None, *, timeout: float = 1.5) -> dict[str, float] | None:
    """None when the agent cannot be reached (stopped, starting, or no route from here)."""
    if not probe_url:
        return None
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(f"{probe_url}/metrics") as response,
        ):
            if response.status != 200:
                return None
            return parse_usage(await response.text())
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
