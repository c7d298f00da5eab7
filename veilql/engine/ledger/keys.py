"""A party's secret ledger key: ``<state_dir>/<party>.ledger-key`` beside its ledger.

The key is 32 random bytes from ``secrets``, stored as 64 hex digits and a newline in a file
created with mode 0600 (like the party's ``<party>.seed``). It is the HMAC-SHA256 key of the
party's hash chain: without it nobody can recompute a chain that verifies. It is created once,
when the party's ledger is created (just before the genesis entry is written), and never for
a ledger that already exists without one (ledgers made before keys existed stay plain SHA-256).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> path = key_path(d / "bank.jsonl", "bank")
>>> path.name, load_key(path)
('bank.ledger-key', None)
>>> key = create_key(path)
>>> len(key), load_key(path) == key, oct(path.stat().st_mode & 0o777)
(32, True, '0o600')
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from veilql.engine.ledger.errors import LedgerError

KEY_BYTES = 32


def key_path(ledger_path: str | os.PathLike[str], party: str) -> Path:
    """Where ``party`` keeps its ledger key: ``<party>.ledger-key`` beside its ledger."""
    return Path(ledger_path).parent / f"{party}.ledger-key"


def load_key(path: Path) -> bytes | None:
    """The key stored at ``path``, or None when there is no such file.

    Raises ``LedgerError`` (exit 3) when the file exists but cannot be read or is not a key:
    a ledger whose key is unusable cannot be verified, so it must not be used either.
    """
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(
            f"ledger key {path} cannot be read: {getattr(exc, 'strerror', None) or exc}",
            "run as the party's own user, or give read access to its ledger key",
        ) from None
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise LedgerError(
            f"ledger key {path} is not a key ({KEY_BYTES} bytes as hex)",
            "restore the party's ledger key from a backup; without it the ledger cannot "
            "be verified",
        )
    return key


def create_key(path: Path) -> bytes:
    """Create a fresh key at ``path`` (mode 0600, fsynced with its folder) and return it.

    The key is written to a temporary file and linked into place, so ``path`` never holds
    half a key, even after a crash. If another process created it first, that key is
    returned instead.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            data = (key.hex() + "\n").encode("ascii")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and fails if the key already exists
        except FileExistsError:
            existing = load_key(path)
            assert existing is not None
            return existing
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return key


def fsync_dir(folder: Path) -> None:
    """Make the directory entries of ``folder`` durable (a new file's name survives a crash)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
