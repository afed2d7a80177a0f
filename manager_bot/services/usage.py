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


async def metrics_text(http: aiohttp.ClientSession, probe_url: str) -> str | None:
    """An agent's /metrics, or None when it cannot be reached or answers with an error."""
    try:
        async with http.get(f"{probe_url}/metrics") as response:
            return await response.text() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


async def fetch_usage(probe_url: str | None, *, timeout: float = 1.5) -> dict[str, float] | None:
    """None when the agent cannot be reached (stopped, starting, or no route from here)."""
    if not probe_url:
        return None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        text = await metrics_text(http, probe_url)
    try:
        return parse_usage(text) if text is not None else None
    except ValueError:
        return None
