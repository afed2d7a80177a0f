"""The vault: MultiFernet rotation, the generated local key, and clear refusals."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from manager_bot.config import ManagerSettings
from manager_bot.crypto import Vault, VaultError, generate_key, load_vault
from runtime.settings_loading import load_settings

TOKEN = "123456:AAH-fake-token-for-tests-only-xxxxxxxxxx"


def settings(**env: str) -> ManagerSettings:
    return load_settings(ManagerSettings, {"MANAGER_BOT_TOKEN": TOKEN, **env})


def test_first_key_encrypts_every_key_decrypts() -> None:
    old, new = generate_key(), generate_key()
    written_with_old = Vault([old]).encrypt("secret")
    both = Vault([new, old])
    assert both.decrypt(written_with_old) == "secret"
    fresh = both.encrypt("fresh")
    assert Vault([new]).decrypt(fresh) == "fresh"
    with pytest.raises(VaultError):
        Vault([old]).decrypt(fresh)
    assert Vault([new]).decrypt(both.rotate(written_with_old)) == "secret"


def test_local_key_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    first = load_vault(settings(), data_dir=tmp_path)
    key_file = tmp_path / "fernet.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    Fernet(key_file.read_text().strip().encode())  # a valid key
    second = load_vault(settings(), data_dir=tmp_path)
    assert second.decrypt(first.encrypt("x")) == "x"


def test_postgres_without_keys_refuses(tmp_path: Path) -> None:
    with pytest.raises(VaultError, match="ENCRYPTION_KEYS is required"):
        load_vault(settings(DATABASE_URL="postgresql+asyncpg://u@h/db"), data_dir=tmp_path)
    assert not (tmp_path / "fernet.key").exists()


def test_bad_key_message_has_no_key_material(tmp_path: Path) -> None:
    bad = "not-a-real-fernet-key-but-secret-looking"
    with pytest.raises(VaultError) as caught:
        load_vault(settings(ENCRYPTION_KEYS=bad), data_dir=tmp_path)
    assert "ENCRYPTION_KEYS" in str(caught.value)
    assert bad not in str(caught.value)


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(Path.cwd())}
    return subprocess.run(
        [sys.executable, "-m", "manager_bot", *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_keygen_migrate_and_rotate(tmp_path: Path) -> None:
    key = cli("keygen", env={}, cwd=tmp_path)
    assert key.returncode == 0
    Fernet(key.stdout.strip().encode())
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    env = {"MANAGER_BOT_TOKEN": TOKEN, "DATABASE_URL": url, "ENCRYPTION_KEYS": key.stdout.strip()}
    migrated = cli("migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    rotated = cli(
        "rotate-keys",
        env={**env, "ENCRYPTION_KEYS": f"{generate_key()},{key.stdout.strip()}"},
        cwd=tmp_path,
    )
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 0 secrets" in rotated.stdout
    assert key.stdout.strip() not in rotated.stdout + rotated.stderr
