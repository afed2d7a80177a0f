"""The agent runtime: the lean AI chat bot that runs in every agent pod."""
