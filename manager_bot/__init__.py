"""The manager bot: the Telegram chat that deploys and runs agents."""
