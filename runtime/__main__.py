"""Command line of the agent runtime: `python -m runtime` (configured by environment only)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from runtime.config import RuntimeSettings
from runtime.settings_loading import (
    ConfigError,
    exit_with_config_error,
    load_settings,
    settings_help,
)

PROGRAM = "python -m runtime"


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog=PROGRAM,
        description="Hatchbot agent runtime: one AI chat bot, configured by environment only.",
        epilog=settings_help(RuntimeSettings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
    try:
        settings = load_settings(RuntimeSettings)
    except ConfigError as error:
        exit_with_config_error(PROGRAM, error)
    from runtime.app import serve

    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
