"""Collision-resistant, sortable-enough text ids in the shape of Prisma's `cuid()`.

A cuid is 25 lowercase base-36 characters starting with "c": time in milliseconds, a per-process
counter, a fingerprint of the host and process, and random characters.
"""

import itertools
import os
import secrets
import socket
import struct
import time

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_PAIRS = [high + low for high in _ALPHABET for low in _ALPHABET]
"""Every two-digit base-36 string, "00" to "zz": numbers are written two digits at a time."""
_COUNTER_SPAN = 36**4
_RANDOM_SPAN = 36**8
_counter = itertools.count(secrets.randbelow(_COUNTER_SPAN))


def _base36(number: int, width: int) -> str:
    """The last `width` (even) base-36 digits of `number`."""
    pairs = []
    for _ in range(width // 2):
        number, pair = divmod(number, 1296)
        pairs.append(_PAIRS[pair])
    return "".join(reversed(pairs))


_HOST = _base36(sum(socket.gethostname().encode()) + 36, 2)


def _fingerprint() -> str:
    # The pid is read on every call: a forked worker child must not share its parent's.
    return _base36(os.getpid(), 2) + _HOST


def cuids(count: int) -> list[str]:
    """`count` new ids: `c` + 8 time + 4 counter + 4 fingerprint + 8 random characters each.

    One clock read and one draw of random bytes serve them all, which makes a batch of ids much
    cheaper than as many `cuid()` calls. The random part of each id comes from 8 random bytes.
    """
    head = "c" + _base36(int(time.time() * 1000), 8)
    fingerprint = _fingerprint()
    randoms = struct.unpack(f"<{count}Q", os.urandom(8 * count))
    return [
        f"{head}{_base36(next(_counter) % _COUNTER_SPAN, 4)}{fingerprint}"
        f"{_base36(random % _RANDOM_SPAN, 8)}"
        for random in randoms
    ]


def cuid() -> str:
    """A new id (see `cuids`)."""
    return cuids(1)[0]
