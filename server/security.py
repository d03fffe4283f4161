"""API keys: generated with the OS CSPRNG, stored only as SHA-256 digests, compared in constant time.

Keys carry 256 bits of entropy, so a fast hash is enough (no password-style KDF is needed to resist
guessing); the digest is what the database indexes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "s7_"


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    # surrogatepass: a key that is not valid Unicode (`"\ud800"` from JSON) is just a key that matches nothing.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(key), stored_hash)


def display_prefix(key: str) -> str:
    """What the admin UI shows to tell keys apart without revealing them."""
    return key[: len(KEY_PREFIX) + 6]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def sign(secret: bytes, value: str) -> str:
    return hmac.new(secret, value.encode("utf-8"), hashlib.sha256).hexdigest()
