"""Secrets at rest: a MultiFernet vault (the first key encrypts, every key decrypts).

With no ENCRYPTION_KEYS on the embedded SQLite default, a key is generated once
into `data/fernet.key` (0600) so a first run just works; with any other
database the manager refuses to start without keys, because a generated key
next to a shared database is a key nobody backs up.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from manager_bot.config import PlatformSettings

log = logging.getLogger(__name__)
KEY_FILE = "fernet.key"


class VaultError(Exception):
    """Keys are missing or wrong, or a ciphertext cannot be read; never carries secrets."""


class Vault:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise VaultError("no encryption key")
        try:
            self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
        except (ValueError, TypeError):
            raise VaultError(
                "ENCRYPTION_KEYS holds a value that is not a Fernet key "
                "(generate one with `python -m manager_bot keygen`)"
            ) from None

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise VaultError(
                "a stored secret cannot be decrypted with ENCRYPTION_KEYS (was a key removed?)"
            ) from None

    def rotate(self, ciphertext: str) -> str:
        """Re-encrypt with the first key (MultiFernet.rotate keeps the timestamp)."""
        try:
            return self._fernet.rotate(ciphertext.encode()).decode()
        except InvalidToken:
            raise VaultError("a stored secret cannot be decrypted with ENCRYPTION_KEYS") from None


def generate_key() -> str:
    return Fernet.generate_key().decode()


def load_vault(settings: PlatformSettings, *, data_dir: Path = Path("data")) -> Vault:
    keys = [key.get_secret_value() for key in settings.encryption_keys]
    if keys:
        return Vault(keys)
    if not settings.is_sqlite:
        raise VaultError(
            "ENCRYPTION_KEYS is required with a non-SQLite DATABASE_URL; "
            "generate one with `python -m manager_bot keygen`"
        )
    return Vault([_local_key(data_dir)])


def _local_key(data_dir: Path) -> str:
    path = data_dir / KEY_FILE
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its key
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    log.warning(
        "ENCRYPTION_KEYS is not set: generated %s (mode 0600). Back it up: without it the "
        "stored bot tokens and keys cannot be read. Set ENCRYPTION_KEYS in production.",
        path,
    )
    return key
