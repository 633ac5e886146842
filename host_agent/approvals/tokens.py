"""Approval tokens: what a human types back, and the only form in which they are kept.

A token is 16 symbols of Crockford's base32 (no I, L, O, U, so nothing is
mistyped into another symbol): exactly 80 bits from `secrets`. It is sent to
the approvers and nowhere else; the store, the audit log and every reply
carry only its keyed hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from host_agent.config import Secret

TOKEN_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # noqa: S105 - an alphabet, not a secret
TOKEN_LENGTH = 16
# What people type for the symbols Crockford leaves out.
_LOOK_ALIKES = str.maketrans({"I": "1", "L": "1", "O": "0"})


def new_token() -> str:
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))


def normalize(text: str) -> str | None:
    """The token a human meant (case and look-alikes forgiven), or None if it cannot be one."""
    token = text.strip().upper().translate(_LOOK_ALIKES)
    if len(token) != TOKEN_LENGTH or any(symbol not in TOKEN_ALPHABET for symbol in token):
        return None
    return token


def hash_token(token: str, secret: Secret | None) -> str:
    """HMAC-SHA256 under `[approval] token_secret` when set (a leaked store then gives
    nothing to test guesses against), plain SHA-256 otherwise."""
    data = token.encode("ascii")
    if secret is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(secret.reveal().encode(), data, hashlib.sha256).hexdigest()
