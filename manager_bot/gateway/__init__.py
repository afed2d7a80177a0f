"""The LLM gateway: agents reach models only through it, with a credential of their own.

It holds the platform's provider keys and opens users' own keys from the vault,
enforces budgets and limits, and counts usage into the database. One leaked
agent costs that agent's budget, never a provider key.
"""
