"""Specification of :mod:`koiitasks.identity`: key pairs, node ids, signatures and key files."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koiitasks.errors import KeyFileError, SignatureError
from koiitasks.identity import Keypair, decode_b58, encode_b58, load_key, save_key, verify

FAST = settings(max_examples=100, deadline=None, database=None)

KOII_WALLET = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,44}$")

ALICE = Keypair.from_seed(b"alice")
BOB = Keypair.from_seed(b"bob")
MESSAGE = b"koiitasks:v1:round 7"
SIGNATURE = ALICE.sign(MESSAGE)


def _flip_first_bit(signature: str) -> str:
    raw = bytearray(bytes.fromhex(signature))
    raw[0] ^= 0x01
    return bytes(raw).hex()


def _write_key_file(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


def _secret_b58(keypair: Keypair) -> str:
    return encode_b58(bytes(keypair.signing_key))


class TestKeypair:
    """Key pairs and their base58 node ids."""

    def test_from_seed_is_deterministic(self) -> None:
        """The same seed always gives the same key pair."""
        assert Keypair.from_seed(b"alice").public_id == ALICE.public_id
        assert Keypair.from_seed(b"alice").sign(MESSAGE) == SIGNATURE

    def test_different_seeds_give_different_ids(self) -> None:
        """Two seeds give two node ids."""
        assert ALICE.public_id != BOB.public_id

    def test_generate_gives_a_new_key_each_time(self) -> None:
        """Generated key pairs are random, never repeated."""
        assert Keypair.generate().public_id != Keypair.generate().public_id

    @FAST
    @given(seed=st.binary(max_size=64))
    def test_public_id_looks_like_a_koii_wallet(self, seed: bytes) -> None:
        """A node id is 32 to 44 base58 characters that decode to a 32-byte ed25519 key."""
        public_id = Keypair.from_seed(seed).public_id
        assert KOII_WALLET.match(public_id)
        assert len(decode_b58(public_id)) == 32

    def test_repr_shows_the_id_and_never_the_secret(self) -> None:
        """Printing a key pair (directly or inside a container) never reveals the secret."""
        secret = bytes(ALICE.signing_key)
        for text in (repr(ALICE), str(ALICE), repr([ALICE]), f"{ALICE!r}"):
            assert ALICE.public_id in text
            assert _secret_b58(ALICE) not in text
            assert secret.hex() not in text
            assert repr(secret) not in text


class TestSignatures:
    """Detached ed25519 signatures in hex."""

    def test_a_signature_verifies_for_its_signer_and_message(self) -> None:
        """verify returns quietly for the signer's own signature of the message."""
        verify(ALICE.public_id, MESSAGE, SIGNATURE)

    def test_signatures_are_deterministic(self) -> None:
        """The same key and message always give the same signature (reproducible runs)."""
        assert ALICE.sign(MESSAGE) == SIGNATURE
        assert ALICE.sign(MESSAGE + b"!") != SIGNATURE

    @pytest.mark.parametrize(
        ("public_id", "message", "signature"),
        [
            pytest.param(ALICE.public_id, MESSAGE + b"!", SIGNATURE, id="changed-message"),
            pytest.param(ALICE.public_id, MESSAGE, _flip_first_bit(SIGNATURE), id="changed-sig"),
            pytest.param(BOB.public_id, MESSAGE, SIGNATURE, id="another-key"),
            pytest.param(ALICE.public_id, MESSAGE, BOB.sign(MESSAGE), id="signed-by-another"),
            pytest.param(ALICE.public_id, MESSAGE, "zz" * 64, id="signature-not-hex"),
            pytest.param(ALICE.public_id, MESSAGE, "", id="empty-signature"),
            pytest.param(ALICE.public_id, MESSAGE, SIGNATURE[:20], id="signature-too-short"),
            pytest.param(ALICE.public_id, MESSAGE, SIGNATURE + "22", id="signature-too-long"),
            pytest.param(ALICE.public_id, MESSAGE, "é" * 10, id="signature-not-ascii"),
            pytest.param("not-a-key!", MESSAGE, SIGNATURE, id="signer-not-base58"),
            pytest.param(ALICE.public_id[:10], MESSAGE, SIGNATURE, id="signer-too-short"),
            pytest.param("", MESSAGE, SIGNATURE, id="empty-signer"),
        ],
    )
    def test_verify_raises_signature_error_and_nothing_else(
        self, public_id: str, message: bytes, signature: str
    ) -> None:
        """Every way a signature can fail to verify is reported as a SignatureError."""
        with pytest.raises(SignatureError, match="does not verify"):
            verify(public_id, message, signature)

    @FAST
    @given(public_id=st.text(max_size=60), signature=st.text(max_size=100))
    def test_verify_never_raises_another_exception(self, public_id: str, signature: str) -> None:
        """Arbitrary text as signer or signature is a SignatureError, never a crash."""
        with pytest.raises(SignatureError):
            verify(public_id, MESSAGE, signature)
        with pytest.raises(SignatureError):
            verify(ALICE.public_id, MESSAGE, signature)


class TestSaveKey:
    """Writing key files."""

    def test_creates_a_file_only_its_owner_can_read(self, tmp_path: Path) -> None:
        """A saved key file has mode 0600."""
        path = tmp_path / "node.json"
        save_key(ALICE, path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    def test_saved_key_loads_back_as_the_same_key(self, tmp_path: Path) -> None:
        """load_key(save_key(k)) signs exactly as k does."""
        path = tmp_path / "node.json"
        save_key(ALICE, path)
        loaded = load_key(path)
        assert loaded.public_id == ALICE.public_id
        assert loaded.sign(MESSAGE) == SIGNATURE

    def test_refuses_to_overwrite_an_existing_file(self, tmp_path: Path) -> None:
        """Saving over an existing file raises KeyFileError and leaves the file untouched."""
        path = tmp_path / "node.json"
        save_key(ALICE, path)
        before = path.read_bytes()
        with pytest.raises(KeyFileError, match="already exists") as caught:
            save_key(BOB, path)
        assert str(path) in str(caught.value)
        assert path.read_bytes() == before
        assert load_key(path).public_id == ALICE.public_id

    def test_reports_a_folder_that_does_not_exist(self, tmp_path: Path) -> None:
        """Saving into a missing folder is a KeyFileError naming the path as the user wrote it
        and the missing folder, with the command that makes it."""
        path = tmp_path / "missing" / "node.json"
        with pytest.raises(KeyFileError, match="cannot create key file") as caught:
            save_key(ALICE, path)
        assert f"cannot create key file {str(path)!r}: " in caught.value.message
        assert f"folder {path.parent} does not exist" in caught.value.message
        assert f"mkdir -p {path.parent}" in (caught.value.hint or "")


class TestLoadKey:
    """Reading key files."""

    def test_reports_a_missing_file_with_a_hint(self, tmp_path: Path) -> None:
        """A missing key file is a KeyFileError that says how to make one."""
        path = tmp_path / "absent.json"
        with pytest.raises(KeyFileError, match="does not exist") as caught:
            load_key(path)
        assert str(path) in str(caught.value)
        assert "koiitasks node keygen" in str(caught.value)

    @pytest.mark.parametrize(
        "mode",
        [
            pytest.param(0o640, id="group-readable"),
            pytest.param(0o604, id="world-readable"),
            pytest.param(0o644, id="group-and-world-readable"),
            pytest.param(0o620, id="group-writable"),
            pytest.param(0o601, id="world-executable"),
        ],
    )
    def test_refuses_a_file_others_can_access(self, tmp_path: Path, mode: int) -> None:
        """A key file with any group or other permission bit is refused with a chmod hint."""
        path = tmp_path / "node.json"
        save_key(ALICE, path)
        path.chmod(mode)
        with pytest.raises(KeyFileError, match="readable by group or others") as caught:
            load_key(path)
        assert f"{mode:o}" in str(caught.value)
        assert f"chmod 600 {path}" in str(caught.value)

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param(b"not json", id="not-json"),
            pytest.param(b"\xff\xfe", id="not-utf8"),
            pytest.param(b"[1, 2]", id="a-list"),
            pytest.param(b'"a string"', id="a-string"),
            pytest.param(b"{}", id="no-secret"),
            pytest.param(b'{"secret": 7}', id="secret-not-a-string"),
            pytest.param(b'{"secret": "0OIl"}', id="secret-not-base58"),
            pytest.param(b'{"secret": "abc"}', id="secret-wrong-length"),
        ],
    )
    def test_refuses_a_malformed_file(self, tmp_path: Path, content: bytes) -> None:
        """A key file that is not a saved key is a KeyFileError naming the path."""
        path = _write_key_file(tmp_path / "node.json", content)
        with pytest.raises(KeyFileError, match="is malformed") as caught:
            load_key(path)
        assert str(path) in str(caught.value)

    def test_a_missing_field_is_named(self, tmp_path: Path) -> None:
        """JSON without the secret says which field is missing (not a bare 'secret')."""
        path = _write_key_file(tmp_path / "node.json", b'{"x": 1}')
        with pytest.raises(KeyFileError) as caught:
            load_key(path)
        assert caught.value.message.endswith("is malformed: it has no 'secret' field")
        assert "koiitasks node keygen" in (caught.value.hint or "")

    def test_refuses_a_file_of_another_kind(self, tmp_path: Path) -> None:
        """A JSON file with a valid secret but another kind is not taken for a key file."""
        doc = {"kind": "solana-keypair", "public": ALICE.public_id, "secret": _secret_b58(ALICE)}
        path = _write_key_file(tmp_path / "node.json", json.dumps(doc).encode())
        with pytest.raises(KeyFileError, match="not a koiitasks key file"):
            load_key(path)

    def test_refuses_a_public_id_that_does_not_match_the_secret(self, tmp_path: Path) -> None:
        """A key file whose public id belongs to another key is refused."""
        doc = {"kind": "koiitasks-ed25519-key", "public": BOB.public_id}
        doc["secret"] = _secret_b58(ALICE)
        path = _write_key_file(tmp_path / "node.json", json.dumps(doc).encode())
        with pytest.raises(KeyFileError, match="public key does not match the secret"):
            load_key(path)


class TestHostileKeyPaths:
    """Key paths that are not plain files are refused at once, never read or blocked on."""

    def test_a_named_pipe_is_refused_without_blocking(self, tmp_path: Path) -> None:
        """A FIFO in place of a key file (reading it would wait forever) is refused."""
        path = tmp_path / "node.json"
        os.mkfifo(path, 0o600)
        with pytest.raises(KeyFileError, match="not a regular file"):
            load_key(path)

    def test_an_oversized_file_is_refused_unread(self, tmp_path: Path) -> None:
        """A file far bigger than a key is refused as malformed before it is read."""
        path = _write_key_file(tmp_path / "node.json", b" " * 100_000)
        with pytest.raises(KeyFileError, match="100,000 bytes, not a key"):
            load_key(path)

    @pytest.mark.parametrize(
        "action",
        [pytest.param(load_key, id="load"), pytest.param(lambda p: save_key(ALICE, p), id="save")],
    )
    def test_a_path_with_a_nul_byte_is_a_key_file_error(
        self, tmp_path: Path, action: Callable[[Path], object]
    ) -> None:
        """A NUL byte in the path is a KeyFileError, not a ValueError from the OS layer."""
        with pytest.raises(KeyFileError, match=r"no\\x00de\.json"):
            action(tmp_path / "no\x00de.json")
