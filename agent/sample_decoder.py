"""Decode a recording line straight into a Sample in one call: msgspec parses the JSON
and checks the types of a sample's fields in C (Sample is a msgspec Struct), about
twice as fast as decoding to dicts and checking them in Python (Sample.from_json).

A line it refuses (a boolean or non-finite value, a label that is not a string, an
error that is not text, anything malformed) goes to the reader's general path,
which decides as before; so the decoder changes speed, never which samples are read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import msgspec

from ai_bottleneck.probes.sample import Sample

TypedDecoder = Callable[[bytes], Sample]
#: What the typed decoder raises for a line it refuses (msgspec.DecodeError is a
#: ValueError; absurd nesting may end in RecursionError).
REFUSED = (ValueError, RecursionError)


@functools.cache
def typed_decoder() -> TypedDecoder:
    """msgspec's decoder of Sample lines (made once: building it inspects Sample's
    type hints)."""
    return msgspec.json.Decoder(Sample).decode

