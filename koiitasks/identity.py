"""Ed25519 identities: key pairs, base58 node ids, signing and verification, key files.

A node's id is its public key in base58, as a Koii wallet's address is. Keys come from PyNaCl;
signatures are deterministic, so the same key and message always give the same bytes, which is
what makes seeded sandbox runs byte-for-byte reproducible.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import base58
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from koiitasks.errors import KeyFileError, SignatureError

_KEY_FILE_KIND = "koiitasks-ed25519-key"
#: A key file is about 150 bytes; a bigger one is not a key file.
MAX_KEY_FILE_BYTES = 4096


def encode_b58(data: bytes) -> str:
    """Base58 (Bitcoin alphabet, as Solana and Koii use) of ``data``."""
    return str(base58.b58encode(data).decode("ascii"))


def decode_b58(text: str) -> bytes:
    """Bytes of a base58 string; raises ``ValueError`` when it is not base58."""
    return bytes(base58.b58decode(text.encode("ascii")))


@dataclass(frozen=True)
class Keypair:
    """An ed25519 signing key and its base58 public id."""

    signing_key: SigningKey
    public_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once: base58 is pure Python and every signature names its signer.
        verify_key = self.signing_key.verify_key
        object.__setattr__(self, "public_id", encode_b58(bytes(verify_key)))
        _remember_key(self.public_id, verify_key)  # its id need never be decoded here

    @classmethod
    def generate(cls) -> Keypair:
        """A new random key pair."""
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Keypair:
        """The key pair derived from a 32-byte seed (deterministic)."""
        return cls(SigningKey(hashlib.sha256(seed).digest()))

    def sign(self, message: bytes) -> str:
        """A detached signature of ``message`` in lowercase hex (C-speed both ways, unlike
        base58, which stays for node ids as Koii wallets spell them)."""
        return self.signing_key.sign(message).signature.hex()

    def __repr__(self) -> str:  # never print the secret
        return f"Keypair({self.public_id})"


_SIGNATURE = re.compile(r"[0-9a-f]{128}")  # one spelling only: "AB" would decode like "ab"
_VERIFIED_MAX = 200_000
_verified: set[tuple[str, str, bytes]] = set()
_verified_lock = threading.Lock()


_KEYS_MAX = 200_000
_keys: dict[str, VerifyKey] = {}
_keys_lock = threading.Lock()


def _remember_key(public_id: str, key: VerifyKey) -> None:
    with _keys_lock:
        if len(_keys) >= _KEYS_MAX:
            _keys.pop(next(iter(_keys)))  # the oldest: a bound, not a policy
        _keys[public_id] = key


def _verify_key(public_id: str) -> VerifyKey:
    """The verify key a base58 id names: decoded once (pure-Python base58), then kept."""
    key = _keys.get(public_id)
    if key is None:
        key = VerifyKey(decode_b58(public_id))
        _remember_key(public_id, key)
    return key


def verify(public_id: str, message: bytes, signature: str) -> None:
    """Check a hex detached signature; raise :class:`SignatureError` when it fails.

    Good verdicts are remembered (a verdict is a pure function of its inputs), so a request that
    thousands of simulated nodes check costs one verification.
    """
    key = (public_id, signature, hashlib.sha256(message).digest())
    if key in _verified:
        return
    if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
        raise SignatureError(
            f"signature by {public_id} does not verify: not 64 bytes in lowercase hex"
        )
    try:
        _verify_key(public_id).verify(message, bytes.fromhex(signature))
    except (BadSignatureError, ValueError, TypeError) as e:
        raise SignatureError(f"signature by {public_id} does not verify") from e
    with _verified_lock:
        if len(_verified) >= _VERIFIED_MAX:
            _verified.clear()
        _verified.add(key)


def save_key(keypair: Keypair, path: Path) -> None:
    """Write ``keypair`` to a new file readable by its owner only (mode 0600); never overwrite."""
    body = json.dumps(
        {
            "kind": _KEY_FILE_KIND,
            "public": keypair.public_id,
            "secret": encode_b58(bytes(keypair.signing_key)),
        }
    ).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise KeyFileError(
            f"key file {path} already exists",
            hint="choose another --out path; key files are never overwritten",
        ) from e
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        folder = "" if path.parent.is_dir() else f"; folder {path.parent} does not exist"
        raise KeyFileError(
            f"cannot create key file {str(path)!r}: {getattr(e, 'strerror', None) or e}{folder}",
            hint=f"create the folder first (`mkdir -p {path.parent}`) or choose another --out"
            if folder
            else "choose a path in a folder you can write to",
        ) from e
    with os.fdopen(fd, "wb") as f:
        f.write(body)


_READABLE = (
    "the user running koiitasks (and a deployment's flow runs) must own the file and be able "
    "to read it: `chown` it, then `chmod 600` it"
)


def load_key(path: Path) -> Keypair:
    """Read a key file written by :func:`save_key`, refusing one others can read."""
    try:
        info = path.stat()
    except FileNotFoundError as e:
        raise KeyFileError(
            f"key file {path} does not exist", hint="create one with `koiitasks node keygen`"
        ) from e
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise KeyFileError(
            f"cannot read key file {path!r}: {getattr(e, 'strerror', e)}", hint=_READABLE
        ) from e
    mode = info.st_mode
    if not stat.S_ISREG(mode):  # a FIFO would block the read forever, a device never end
        raise KeyFileError(f"key file {path} is not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} is readable by group or others (mode {stat.S_IMODE(mode):o})",
            hint=f"run `chmod 600 {path}`",
        )
    if info.st_size > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"key file {path} is malformed: {info.st_size:,} bytes, not a key")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}", hint=_READABLE) from e
    try:
        doc = json.loads(raw)
        keypair = Keypair(SigningKey(decode_b58(doc["secret"])))
    except KeyError as e:
        raise KeyFileError(
            f"key file {path} is malformed: it has no {e.args[0]!r} field",
            hint="key files are written by `koiitasks node keygen`; make a new one",
        ) from e
    except (ValueError, TypeError, AttributeError) as e:
        raise KeyFileError(f"key file {path} is malformed: {e}") from e
    if doc.get("kind") != _KEY_FILE_KIND:
        raise KeyFileError(f"key file {path} is not a koiitasks key file")
    if keypair.public_id != doc.get("public"):
        raise KeyFileError(f"key file {path} is malformed: public key does not match the secret")
    return keypair
