"""`python -m manager_bot doctor`: is this configuration ready to run? One line per check.

Read-only: it creates no key file, migrates nothing and leaves nothing in the
cluster (the namespace probe is a dry run). Nothing secret is printed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy import make_url

from manager_bot.config import ManagerSettings
from manager_bot.crypto import KEY_FILE, Vault, VaultError
from manager_bot.db.migrate import current_revision, head_revision
from manager_bot.db.secrets import unreadable_secrets
from manager_bot.db.session import Database
from manager_bot.leader import LEASE_ACCESS, LEASE_NAME, leader_elected

if TYPE_CHECKING:
    from manager_bot.backends.kubernetes import KubernetesBackend

CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not applicable or not reachable because an earlier check failed
    detail: str
    warning: bool = False  # it runs, but a feature is off: the detail says how to turn it on

    @property
    def line(self) -> str:
        verdict = "WARN" if self.warning else {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]
        return f"{verdict}  {self.name:<15} {self.detail}"


def config_failure(message: str) -> Check:
    return Check("configuration", False, message)


class Doctor:
    def __init__(self, settings: ManagerSettings, *, data_dir: Path = Path("data")) -> None:
        self._settings = settings
        self._data_dir = data_dir

    async def run(self) -> list[Check]:
        checks = [self._configuration()]
        missing = self._missing_sqlite_file()
        if missing:
            # Connecting would create the file: say what the first run will do instead.
            checks.append(Check("database", True, f"none yet: the first run creates {missing}"))
            checks.append(Check("migrations", None, "the first run creates the schema"))
            checks.append(Check("encryption", True, self._key_source_note()))
        else:
            checks.extend(await self._stored_state())
        manager_token = await self._guard("manager token", self._manager_token)
        checks.append(manager_token)
        if manager_token.ok:
            checks.append(await self._guard("managed bots", self._managed_bots))
        else:
            checks.append(Check("managed bots", None, "needs the manager token"))
        checks.extend(await self._cluster())
        checks.append(await self._public_url())
        from manager_bot.intake.checks import webhook_checks  # imports doctor's Check

        checks.extend(await webhook_checks(self._settings))
        return checks

    def _missing_sqlite_file(self) -> str | None:
        url = make_url(self._settings.database_url.get_secret_value())
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return None if Path(url.database).exists() else url.database
        return None

    def _local_key(self) -> str | None:
        key_file = self._data_dir / KEY_FILE
        return key_file.read_text().strip() if key_file.exists() else None

    def _key_source_note(self) -> str:
        count = len(self._settings.encryption_keys)
        if count:
            return f"{count} key(s) in ENCRYPTION_KEYS, nothing stored yet"
        return f"no key yet: the first run generates {self._data_dir / KEY_FILE} (0600)"

    async def _stored_state(self) -> list[Check]:
        checks: list[Check] = []
        database = Database(self._settings.database_url.get_secret_value())
        try:
            reachable = await self._guard("database", lambda: self._database(database))
            checks.append(reachable)
            if reachable.ok:
                checks.append(await self._guard("migrations", lambda: self._migrations(database)))
                checks.append(await self._guard("encryption", lambda: self._keys(database)))
            else:
                checks.append(Check("migrations", None, "needs the database"))
                checks.append(Check("encryption", None, "needs the database"))
        finally:
            await database.close()
        return checks

    async def _guard(self, name: str, check: Callable[[], Awaitable[Check]]) -> Check:
        """A check that crashes is a failed check, named, without the traceback's secrets."""
        try:
            async with asyncio.timeout(30):
                return await check()
        except TimeoutError:
            return Check(name, False, "no answer within 30 s")
        except Exception as error:
            return Check(name, False, f"{type(error).__name__}")

    def _configuration(self) -> Check:
        url = make_url(self._settings.database_url.get_secret_value())
        shown = url.render_as_string(hide_password=True)
        return Check(
            "configuration", True, f"BACKEND={self._settings.backend}, DATABASE_URL={shown}"
        )

    async def _database(self, database: Database) -> Check:
        try:
            await database.ping()
        except Exception as error:  # the driver's message may hold the URL: name the type only
            return Check("database", False, f"cannot connect ({type(error).__name__})")
        return Check("database", True, "reachable")

    async def _migrations(self, database: Database) -> Check:
        head, current = head_revision(), await current_revision(database)
        if current == head:
            return Check("migrations", True, f"at the latest schema ({head})")
        return Check(
            "migrations",
            False,
            f"at {current or 'an empty database'}, latest is {head}: "
            "run `python -m manager_bot migrate` (the manager also upgrades on start)",
        )

    async def _keys(self, database: Database) -> Check:
        keys = [key.get_secret_value() for key in self._settings.encryption_keys]
        source = f"{len(keys)} key(s) from ENCRYPTION_KEYS"
        if not keys:
            if not self._settings.is_sqlite:
                return Check("encryption", False, "ENCRYPTION_KEYS is required with PostgreSQL")
            local_key = self._local_key()
            if local_key is None:
                return Check("encryption", True, self._key_source_note())
            keys, source = [local_key], str(self._data_dir / KEY_FILE)
        try:
            vault = Vault(keys)
        except VaultError as error:
            return Check("encryption", False, str(error))
        stored, unreadable = await unreadable_secrets(database, vault)
        if unreadable:
            return Check(
                "encryption",
                False,
                f"{unreadable} of {stored} stored secrets cannot be decrypted with {source} "
                "(was a key removed? keep old keys after the first until `rotate-keys`)",
            )
        return Check("encryption", True, f"{source} decrypt all {stored} stored secrets")

    async def _manager_token(self) -> Check:
        from manager_bot.services.telegram import AgentTelegram, AgentTokenError

        telegram = AgentTelegram(api_url=self._settings.telegram_api_url)
        try:
            identity = await telegram.identify(self._settings.manager_bot_token.get_secret_value())
        except AgentTokenError as error:
            why = {
                AgentTokenError.INVALID: "Telegram rejected MANAGER_BOT_TOKEN (revoked or mistyped)",
                AgentTokenError.UNREACHABLE: (
                    f"cannot reach the Bot API at {self._settings.telegram_api_url}"
                ),
            }.get(error.reason, f"getMe failed: {error.reason}")
            return Check("manager token", False, why)
        finally:
            await telegram.close()
        return Check("manager token", True, f"getMe: @{identity.username}")

    async def _managed_bots(self) -> Check:
        """Telegram's Bot Management Mode (getMe's can_manage_bots): without it /deploy
        cannot offer "Create a new bot", and users must paste a BotFather token."""
        from aiogram import Bot
        from aiogram.client.telegram import TelegramAPIServer

        from manager_bot.telegram_session import JsonSession

        session = JsonSession(api=TelegramAPIServer.from_base(self._settings.telegram_api_url))
        bot = Bot(self._settings.manager_bot_token.get_secret_value(), session=session)
        try:
            me = await bot.me()
        finally:
            await session.close()
        if me.can_manage_bots:
            return Check("managed bots", True, "Bot Management Mode is on: /deploy can create bots")
        return Check(
            "managed bots",
            True,
            "Bot Management Mode is off, so users must paste a BotFather token. To let them "
            "create bots in two taps: open @BotFather → your bot → Bot Settings → "
            "Bot Management Mode → Turn on, then restart the manager",
            warning=True,
        )

    async def _cluster(self) -> list[Check]:
        if self._settings.backend != "kubernetes":
            return [Check("cluster", None, "BACKEND=local runs agents as local processes")]
        from manager_bot.backends.kubernetes import (
            KubernetesBackend,
            KubernetesError,
            required_access,
        )

        try:
            backend = KubernetesBackend.from_settings(self._settings)
        except Exception as error:
            return [
                Check(
                    "cluster",
                    False,
                    f"no in-cluster account and no usable kubeconfig ({type(error).__name__})",
                )
            ]
        namespace = self._settings.k8s_namespace
        try:
            try:
                version = await backend.server_version()
            except KubernetesError as error:
                return [Check("cluster", False, str(error))]
            checks = [Check("cluster", True, f"reachable, Kubernetes {version}")]
            try:
                await backend.check_namespace()
                checks.append(Check("namespace", True, f"{namespace} exists"))
            except KubernetesError as error:
                reason = f"{namespace} not found" if error.status == 404 else str(error)
                checks.append(Check("namespace", False, reason))
            needed = sorted(required_access(self._settings.k8s_router))
            missing = [
                f"{verb} {resource}" + (f" ({group})" if group else "")
                for verb, group, resource in needed
                if not await backend.can_i(verb, group, resource)
            ]
            if missing:
                detail = (
                    f"missing in {namespace}: " + ", ".join(missing) + " (see k8s/base/rbac.yaml)"
                )
                checks.append(Check("permissions", False, detail))
            else:
                checks.append(
                    Check("permissions", True, f"all {len(needed)} granted in {namespace}")
                )
            if leader_elected(self._settings):
                checks.append(await self._lease_access(backend))
            return checks
        finally:
            await backend.close()

    async def _lease_access(self, backend: KubernetesBackend) -> Check:
        """Several replicas elect a leader with a Lease in the manager's namespace."""
        namespace = self._settings.k8s_manager_namespace
        missing = []
        for verb, group, resource in sorted(LEASE_ACCESS):
            # `create` names no object (RBAC cannot narrow it); get and update name ours.
            name = "" if verb == "create" else LEASE_NAME
            if not await backend.can_i(verb, group, resource, namespace=namespace, name=name):
                missing.append(verb)
        where = f"Lease {LEASE_NAME} in {namespace}"
        if missing:
            detail = f"cannot {', '.join(missing)} the {where} (see k8s/base/rbac.yaml)"
            return Check("leader lease", False, detail)
        return Check("leader lease", True, f"may get, create and update the {where}")

    async def _public_url(self) -> Check:
        url = self._settings.public_url
        if self._settings.backend != "kubernetes":
            return Check("public URL", None, "not used by the local backend (agents poll)")
        if not url:
            return Check("public URL", False, "PUBLIC_URL is required when BACKEND=kubernetes")
        parts = urlsplit(url)
        if parts.scheme != "https":
            return Check(
                "public URL", False, f"{url} must be https: Telegram sends webhooks only there"
            )
        host, port = parts.hostname or "", parts.port or 443
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            return Check("public URL", False, f"{host}:{port} did not answer within 5 s")
        except OSError as error:
            why = error.strerror or type(error).__name__
            return Check("public URL", False, f"cannot connect to {host}:{port} ({why})")
        writer.close()
        return Check("public URL", True, f"{host}:{port} accepts connections")
