"""Fixtures for every test: the fakes in tests/fakes are loaded as plugins."""

pytest_plugins = [
    "tests.fakes.databases",
    "tests.fakes.telegram_api",
    "tests.fakes.openai_api",
    "tests.fakes.kubernetes_api",
    "tests.fakes.agent_pods",
    "tests.fakes.task_dump",
]
