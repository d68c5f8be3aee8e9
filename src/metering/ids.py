"""Collision-resistant, sortable-enough text ids in the shape of Prisma's `cuid()`.

A cuid is 25 lowercase base-36 characters starting with "c": time in milliseconds, a per-process
counter, a fingerprint of the host and process, and random characters.
"""

import itertools
import os
import secrets
import socket
import time

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_counter = itertools.count(secrets.randbelow(36**4))


def _base36(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 36)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _fingerprint() -> str:
    host = sum(socket.gethostname().encode()) + 36
    return _base36(os.getpid(), 2) + _base36(host, 2)


def cuid() -> str:
    """A new id: `c` + 8 time + 4 counter + 4 fingerprint + 8 random characters."""
    timestamp = _base36(int(time.time() * 1000), 8)
    counter = _base36(next(_counter), 4)
    random_part = "".join(secrets.choice(_ALPHABET) for _ in range(8))
    return f"c{timestamp}{counter}{_fingerprint()}{random_part}"
