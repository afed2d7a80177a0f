"""The manager's webhook intake: Telegram posts updates here instead of being polled.

`listener` checks and acknowledges each update; `inbox` keeps one user's updates in
order across replicas (a per-user inbox and lock in Redis); `bans` makes a ban given
on one replica hold on the others; `serve` ties them to a running manager.
"""
