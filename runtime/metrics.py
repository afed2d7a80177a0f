"""The runtime's Prometheus metrics (the manager reads them for /status and usage)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ERROR_KINDS = ("auth", "rate_limit", "other")


class Metrics:
    """One registry per runtime, so tests can run several in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.updates_received = Counter(
            "hatchbot_agent_updates_received", "Telegram updates accepted", registry=self.registry
        )
        self.replies_sent = Counter(
            "hatchbot_agent_replies_sent", "Replies sent to Telegram", registry=self.registry
        )
        self.llm_latency = Histogram(
            "hatchbot_agent_llm_latency_seconds",
            "Time from LLM request to the last token",
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
            registry=self.registry,
        )
        self.handling_overhead = Histogram(
            "hatchbot_agent_handling_overhead_seconds",
            "The runtime's own time per answered update, LLM time excluded",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "hatchbot_agent_prompt_tokens", "Prompt tokens used", registry=self.registry
        )
        self.completion_tokens = Counter(
            "hatchbot_agent_completion_tokens", "Completion tokens used", registry=self.registry
        )
        self.llm_errors = Counter(
            "hatchbot_agent_llm_errors",
            "LLM calls that failed, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.last_llm_error = Gauge(
            "hatchbot_agent_last_llm_error_timestamp_seconds",
            "When the last LLM error of each kind happened",
            ["kind"],
            registry=self.registry,
        )
        self.last_llm_success = Gauge(
            "hatchbot_agent_last_llm_success_timestamp_seconds",
            "When an LLM call last succeeded (0: never); the manager compares it with errors",
            registry=self.registry,
        )
        for kind in ERROR_KINDS:
            self.llm_errors.labels(kind=kind)

    def llm_failed(self, kind: str) -> None:
        self.llm_errors.labels(kind=kind).inc()
        self.last_llm_error.labels(kind=kind).set(time.time())

    def llm_answered(self, seconds: float, prompt_tokens: int, completion_tokens: int) -> None:
        self.llm_latency.observe(seconds)
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(completion_tokens)
        self.last_llm_success.set(time.time())

    def render(self) -> bytes:
        return generate_latest(self.registry)
