"""Load pydantic settings from the environment without ever leaking a secret.

Shared by both programs (the manager imports it too, the runtime stays free of
aiogram). A bad environment ends the program with one line naming the variable
and exit code 2, never a traceback; values are left out of every message
because a mistyped variable may hold a token.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Mapping
from typing import NoReturn, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

EXIT_BAD_CONFIG = 2


class ConfigError(Exception):
    """The environment cannot make valid settings; the message names the variable."""


def describe_errors(error: ValidationError) -> str:
    """One line per problem, `VARIABLE: message`, never the offending value."""
    lines = []
    for item in error.errors(include_input=False, include_url=False, include_context=False):
        variable = ".".join(str(part) for part in item["loc"]).upper()
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "is required but not set"
        lines.append(f"{variable}: {message}" if variable else message)
    return "; ".join(lines)


def load_settings(cls: type[SettingsT], env: Mapping[str, str] | None = None) -> SettingsT:
    """Build `cls` from `env` (or the process environment); raise ConfigError."""
    try:
        if env is None:
            return cls()
        known = {name.upper() for name in cls.model_fields}
        values = {key.lower(): value for key, value in env.items() if key.upper() in known}
        return cls.model_validate(values)
    except ValidationError as error:
        raise ConfigError(describe_errors(error)) from None


def exit_with_config_error(program: str, error: ConfigError) -> NoReturn:
    print(f"{program}: invalid configuration: {error}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_CONFIG)


def _is_secret(annotation: object) -> bool:
    if annotation is SecretStr:
        return True
    return any(_is_secret(arg) for arg in typing.get_args(annotation))


def settings_help(cls: type[BaseModel]) -> str:
    """The settings as a help table: variable, default (secrets masked), meaning."""
    rows = []
    for name, field in cls.model_fields.items():
        value = field.get_default(call_default_factory=True)
        if field.is_required():
            default = "required"
        elif isinstance(value, SecretStr) and isinstance(field.json_schema_extra, dict):
            # Only defaults marked public (a SQLite path, say) are shown; keys never are.
            public = field.json_schema_extra.get("public_default", False)
            default = value.get_secret_value() if public else "(secret)"
        elif value in (None, "", [], ()):
            default = "unset (secret)" if _is_secret(field.annotation) else "unset"
        elif _is_secret(field.annotation):
            default = "(secret)"
        else:
            default = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        rows.append(f"  {name.upper():<26} {default:<40} {field.description or ''}".rstrip())
    return "environment variables:\n" + "\n".join(rows)
