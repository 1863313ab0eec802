"""Warnings carry a declared kind and stay plain text for every other reader."""

from __future__ import annotations

import copy
import json
import pickle

import orjson

from ai_bottleneck.remarks import Remark, WarningKind, kind_of, subject_of


def test_a_remark_is_text_with_a_kind() -> None:
    r = Remark(WarningKind.RETRANSMITS, "TCP retransmits 2.1% of sent segments", "eth0")
    assert r == "TCP retransmits 2.1% of sent segments"
    assert kind_of(r) is WarningKind.RETRANSMITS and subject_of(r) == "eth0"
    assert kind_of("plain text") is WarningKind.OTHER and subject_of("plain text") is None
    assert json.dumps([r]) == '["TCP retransmits 2.1% of sent segments"]'
    assert orjson.loads(orjson.dumps([r])) == [str(r)]


def test_copies_keep_the_kind() -> None:
    r = Remark(WarningKind.PROBE_UNAVAILABLE, "probe gpu unavailable: no driver", "gpu")
    for twin in (copy.copy(r), copy.deepcopy(r), pickle.loads(pickle.dumps(r))):
        assert twin == r and kind_of(twin) is r.kind and subject_of(twin) == "gpu"
