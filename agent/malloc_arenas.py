"""Fewer malloc arenas for the long-running agent (glibc only).

glibc gives threads that allocate at the same time arenas of their own, up to
eight per core, and an arena's heap gives memory back to the system only from
its top. The endpoint serves each request on a thread of its own, so a
stream of short connections (scrapers without keep-alive, clients the endpoint
cuts off at the request deadline) spreads short-lived buffers over many arenas
and leaves each a little more fragmented. Two arenas hold about 3 MB less under
`python -m tests.bench.bench_soak` (200 idle and 64 dripping connections) and
its hour grew 0.73 MB (docs/deployment.md quotes the run); the agent's threads
mostly wait on sockets and timers, so they rarely contend for an arena.

An operator's own MALLOC_ARENA_MAX wins; elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os

#: mallopt()'s parameter number for the arena limit (glibc's malloc.h).
M_ARENA_MAX = -8
#: The agent's limit.
AGENT_ARENAS = 2

log = logging.getLogger(__name__)


def limit_arenas(arenas: int = AGENT_ARENAS) -> bool:
    """Cap this process's malloc arenas; True when the cap was set. Call before the
    threads start (arenas made already stay)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no dynamic libc, or not glibc's
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_ARENA_MAX, arenas))
    if not ok:
        log.debug("mallopt(M_ARENA_MAX, %d) refused", arenas)
    return ok
