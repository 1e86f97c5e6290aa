"""The bearer tokens of the test stack: one per role, readable names padded with random
characters to the 32 the services require, written to an owner-only tokens file."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from shared.http import MIN_TOKEN_LENGTH, Role, partner_role
from shared.private_files import write_private


def test_token(name: str) -> str:
    """`test-<name>-<random hex>`, at least MIN_TOKEN_LENGTH characters long."""
    token = f"test-{name}-{secrets.token_hex(12)}"
    assert len(token) >= MIN_TOKEN_LENGTH
    return token


test_token.__test__ = False  # type: ignore[attr-defined]  # a helper, not a pytest test

ADMIN = test_token("admin")
FINANCE = test_token("finance")
OUTCOMES = test_token("outcomes")
OPS = test_token("ops")
ML_TOULOUSE = test_token("ml-toulouse")
FT_TOULOUSE = test_token("ft-toulouse")

TOKENS = {
    ADMIN: Role.ADMIN,
    FINANCE: Role.FINANCE,
    OUTCOMES: Role.OUTCOMES,
    OPS: Role.OPS,
    ML_TOULOUSE: partner_role("ml-toulouse"),
    FT_TOULOUSE: partner_role("ft-toulouse"),
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_tokens_file(path: Path, tokens: dict[str, str] = TOKENS) -> Path:
    """The tokens file the services read (0600 from its first byte)."""
    write_private(path, json.dumps(tokens, indent=2) + "\n")
    return path
