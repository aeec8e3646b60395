"""A checkpoint of the searcher before its split into parts (state version 2, one class
holding everything) as the state of today's :class:`~orchestrator.searcher.TargetSearcher`,
so that a sweep begun before the split resumes and suggests what it would have."""

from __future__ import annotations

from typing import Any

from orchestrator.search.policy import NeediestTarget
from orchestrator.search.record import StorageRecord
from orchestrator.search.replay import ReplayLog
from orchestrator.search.sharing import GoodGroupSharing
from orchestrator.search.studies import ConstrainedStudies, ParetoStudy

_MOVED = (
    "_pareto",
    "_margin",
    "_storage",
    "_flushed",
    "_records",
    "_serial",
    "_order",
    "_finished",
    "_spaces",
)


def from_version_2(old: dict[str, Any]) -> dict[str, Any]:
    log = ReplayLog(len(old["_order"]))
    log.records, log.serial, log.order = old["_records"], old["_serial"], old["_order"]
    log.finished, log.spaces = old["_finished"], old["_spaces"]
    record = StorageRecord(old["_storage"])
    record.written = old["_flushed"]
    state = {k: v for k, v in old.items() if k not in _MOVED}
    state.update(
        _kind=ParetoStudy() if old["_pareto"] else ConstrainedStudies(),
        _policy=NeediestTarget(),
        _sharing=GoodGroupSharing(old["_margin"]),
        _record=record,
        _log=log,
        _version=3,
    )
    return state
