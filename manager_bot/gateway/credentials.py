"""Agents' gateway credentials: random, shown to nobody, looked up by their hash."""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "hbgw_"


def new_credential() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def credential_hash(credential: str) -> str:
    """SHA-256 is enough: a credential is 256 random bits, not a password to stretch."""
    return hashlib.sha256(credential.encode()).hexdigest()
