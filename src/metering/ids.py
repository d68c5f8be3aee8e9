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


_HOST = _base36(sum(socket.gethostname().encode()) + 36, 2)
_RANDOM_IDS = 36**8


def _fingerprint() -> str:
    # The pid is read on every call: a forked worker child must not share its parent's.
    return _base36(os.getpid(), 2) + _HOST


def cuid() -> str:
    """A new id: `c` + 8 time + 4 counter + 4 fingerprint + 8 random characters."""
    timestamp = _base36(int(time.time() * 1000), 8)
    counter = _base36(next(_counter), 4)
    random_part = _base36(secrets.randbelow(_RANDOM_IDS), 8)
    return f"c{timestamp}{counter}{_fingerprint()}{random_part}"
