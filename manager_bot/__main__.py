"""Command line of the manager: `python -m manager_bot [run|migrate|keygen|rotate-keys|doctor]`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

from manager_bot.config import ManagerSettings
from runtime.settings_loading import (
    ConfigError,
    exit_with_config_error,
    load_settings,
    settings_help,
)

PROGRAM = "python -m manager_bot"


def _run(settings: ManagerSettings) -> int:
    from manager_bot.app import run_manager  # aiogram is heavy: import only when running

    asyncio.run(run_manager(settings))
    return 0


COMMANDS: dict[str, tuple[str, Callable[[ManagerSettings], int]]] = {
    "run": ("run the manager bot (default)", _run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Hatchbot manager: the Telegram bot that deploys Telegram bots.",
        epilog=settings_help(ManagerSettings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (summary, _) in COMMANDS.items():
        sub.add_parser(name, help=summary, description=summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(ManagerSettings)
    except ConfigError as error:
        exit_with_config_error(PROGRAM, error)
    _, command = COMMANDS[args.command or "run"]
    return command(settings)


if __name__ == "__main__":
    sys.exit(main())
