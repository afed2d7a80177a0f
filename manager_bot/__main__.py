"""Command line of the manager: `python -m manager_bot [run|gateway|migrate|keygen|rotate-keys|doctor]`.

The `hatchbot` console script (pyproject.toml) is the same command line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Callable, Sequence
from typing import Any

from manager_bot.config import ManagerSettings, PlatformSettings
from manager_bot.event_loop import run
from runtime.settings_loading import (
    ConfigError,
    exit_with_config_error,
    load_settings,
    settings_help,
)

PROGRAM = "python -m manager_bot"
SCRIPT = "hatchbot"  # [project.scripts]
DISTRIBUTION = "hatchbot"  # [project] name


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # scans sys.path: when asked

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        return "unknown (not installed)"


class _PrintVersion(argparse.Action):
    """--version, read from the installed metadata only when asked (start-up stays quick)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"{parser.prog} {package_version()}")
        parser.exit()


def _run(settings: ManagerSettings) -> int:
    # aiogram is heavy: imported only when running. Its imports build hundreds of pydantic
    # models that all live on; the collector walking them meanwhile only slows start-up.
    gc.disable()
    try:
        from manager_bot.app import run_manager
    finally:
        gc.enable()
    run(run_manager(settings), loop=settings.event_loop)
    return 0


def _gateway(settings: PlatformSettings) -> int:
    from manager_bot.gateway.process import run_gateway

    run(run_gateway(settings), loop=settings.event_loop)
    return 0


def _migrate(settings: PlatformSettings) -> int:
    from manager_bot.db.migrate import upgrade

    asyncio.run(upgrade(settings.database_url.get_secret_value()))
    print("database upgraded to the latest schema")
    return 0


def _keygen(settings: ManagerSettings | None) -> int:
    from manager_bot.crypto import generate_key

    print(generate_key())
    return 0


def _rotate_keys(settings: PlatformSettings) -> int:
    from manager_bot.crypto import VaultError, load_vault
    from manager_bot.db.secrets import rotate_secrets
    from manager_bot.db.session import Database

    async def rotate() -> int:
        database = Database(settings.database_url.get_secret_value())
        try:
            return await rotate_secrets(database, load_vault(settings))
        finally:
            await database.close()

    try:
        count = asyncio.run(rotate())
    except VaultError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 1
    print(f"re-encrypted {count} secrets with the first key of ENCRYPTION_KEYS")
    return 0


def _doctor(settings: ManagerSettings) -> int:
    from manager_bot.doctor import Doctor
    from manager_bot.logs import configure_logging

    # The checks print to stdout; what the libraries log goes to stderr, as LOG_LEVEL says.
    configure_logging(settings.log_format, settings.secret_values(), level=settings.log_level)
    checks = asyncio.run(Doctor(settings).run())
    for check in checks:
        print(check.line)
    failed = [check.name for check in checks if check.ok is False]
    warned = [check.name for check in checks if check.warning]
    notes = f" ({len(warned)} warning(s): {', '.join(warned)})" if warned else ""
    print(
        f"{len(failed)} check(s) failed: {', '.join(failed)}{notes}"
        if failed
        else f"all checks passed{notes}"
    )
    return 1 if failed else 0


# name -> (help, function, the settings it reads)
COMMANDS: dict[str, tuple[str, Callable[[Any], int], type[PlatformSettings] | None]] = {
    "run": ("run the manager bot (default)", _run, ManagerSettings),
    "gateway": (
        "serve the LLM gateway on its own (GATEWAY_HOST:GATEWAY_PORT; no bot token needed)",
        _gateway,
        PlatformSettings,
    ),
    "migrate": ("upgrade the database to the latest schema", _migrate, PlatformSettings),
    "keygen": ("print a new Fernet key for ENCRYPTION_KEYS", _keygen, None),
    "rotate-keys": (
        "re-encrypt every stored secret with the first key",
        _rotate_keys,
        PlatformSettings,
    ),
    "doctor": (
        "check configuration, database, keys, token, cluster, PUBLIC_URL",
        _doctor,
        ManagerSettings,
    ),
}


def build_parser(program: str = PROGRAM) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program,
        description="Hatchbot manager: the Telegram bot that deploys Telegram bots.",
        epilog=settings_help(ManagerSettings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_PrintVersion)
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (summary, _, _) in COMMANDS.items():
        sub.add_parser(name, help=summary, description=summary)
    return parser


def main(argv: Sequence[str] | None = None, *, program: str = PROGRAM) -> int:
    args = build_parser(program).parse_args(argv)
    _, command, settings_class = COMMANDS[args.command or "run"]
    if settings_class is None:
        return command(None)
    try:
        settings = load_settings(settings_class)
    except ConfigError as error:
        if args.command == "doctor":  # a failed check like the others, not a usage error
            print(f"FAIL  {'configuration':<15} {error}")
            return 1
        exit_with_config_error(program, error)
    return command(settings)


def entry_point() -> None:
    """The `hatchbot` console script."""
    sys.exit(main(program=SCRIPT))


if __name__ == "__main__":
    sys.exit(main())
