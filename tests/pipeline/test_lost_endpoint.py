"""An endpoint lost mid-shard: which shards count as having lost their endpoint (their last requests
all failed to connect), and how the attempts set aside for it reach the run's warnings."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pytest

from fmbench import storage
from fmbench.errors import NO_ANSWER_BYTE
from fmbench.loadgen.engine import HUNG_MIN_REQUESTS
from fmbench.pipeline.shards import (
    LOST_ENDPOINT_MIN_REQUESTS,
    SetAside,
    hung_endpoint,
    lost_endpoint,
    set_aside_warnings,
)
from fmbench.rundir import RunInfo

OK, REFUSED, CUT = None, "connection", "protocol"


LOADING, BUSY = "loading", "busy"  # llama.cpp's 503 while it loads its model; a 503 of a server at capacity


def _measured(kinds: list[str | None], shuffle: bool = False) -> pl.DataFrame:
    ids = list(range(len(kinds)))
    errors = [None if k is None else "HTTP 503: Loading model" if k == LOADING else "HTTP 503: server busy"
              if k == BUSY else f"{k} error of request {i}" for i, k in enumerate(kinds)]
    rows = pl.DataFrame({"request_id": ids,
                         "error_kind": ["server_error" if k in (LOADING, BUSY) else k for k in kinds],
                         "http_status": [503 if k in (LOADING, BUSY) else None for k in kinds], "error": errors},
                        schema={"request_id": pl.Int64, "error_kind": pl.Utf8, "http_status": pl.Int64,
                                "error": pl.Utf8})
    return rows.reverse() if shuffle else rows  # the records' order is the order requests ended


def test_the_last_requests_refused_mean_the_endpoint_was_lost_after_the_ones_before() -> None:
    # Two requests in flight when it went: one cut off, then everything after refused.
    kinds = [OK] * 6 + [CUT] + [REFUSED] * 13
    assert lost_endpoint(_measured(kinds, shuffle=True), 2) == (7, 13, "connection error of request 7")


def test_every_request_refused_is_an_endpoint_down_from_the_start_however_few() -> None:
    assert lost_endpoint(_measured([REFUSED] * 2), 64) == (0, 2, "connection error of request 0")


def test_a_server_still_loading_its_model_is_not_serving_yet() -> None:
    # Restarted mid-shard: refused while down, then 503 "Loading model" until its model is loaded.
    kinds = [OK] * 6 + [REFUSED] * 4 + [LOADING] * 8
    assert lost_endpoint(_measured(kinds), 2) == (6, 12, "connection error of request 6")
    assert lost_endpoint(_measured([LOADING] * 3), 4) == (0, 3, "HTTP 503: Loading model")
    # A 503 of a server at capacity is a measurement of that server, not its absence.
    assert lost_endpoint(_measured([OK] * 6 + [BUSY] * 8), 2) is None


@pytest.mark.parametrize(("kinds", "concurrency"), [
    ([OK] * 10, 4),  # nothing refused
    ([OK] * 10 + [REFUSED] * (LOST_ENDPOINT_MIN_REQUESTS - 1), 1),  # a short run at the end: counted as errors
    ([OK] * 10 + [REFUSED] * 6, 8),  # fewer than were in flight: could be one burst of broken connections
    ([OK, REFUSED] * 10, 1),  # refusals between answers: the endpoint was there, failing some requests
    ([REFUSED] * 10 + [OK], 1),  # it came back before the shard ended
    ([OK] * 4 + [REFUSED] * 6 + ["timeout"], 1),  # the last request reached it
], ids=["none", "short", "under-concurrency", "interleaved", "came-back", "last-not-refused"])
def test_errors_the_endpoint_was_there_for_are_measurements(kinds: list[str | None], concurrency: int) -> None:
    assert lost_endpoint(_measured(kinds), concurrency) is None


SILENT, SLOW = "silent", "slow"


def _ended(kinds: list[str | None]) -> pl.DataFrame:
    """Final attempts in the order they ended (``t_end``), stored in another order."""
    messages = {SILENT: f"read timed out, {NO_ANSWER_BYTE} (SocketTimeoutError)",
                SLOW: "no complete answer within 2 s", REFUSED: "cannot connect", CUT: "answer cut off"}
    rows = pl.DataFrame({
        "request_id": list(range(len(kinds))), "t_end": [float(i) for i in range(len(kinds))],
        "ok": [k is None for k in kinds],
        "error_kind": [None if k is None else "timeout" if k in (SILENT, SLOW) else k for k in kinds],
        "error": [None if k is None else messages[k] for k in kinds]},
        schema={"request_id": pl.Int64, "t_end": pl.Float64, "ok": pl.Boolean, "error_kind": pl.Utf8,
                "error": pl.Utf8})
    return rows.reverse()


def test_the_last_requests_timed_out_without_a_byte_mean_the_endpoint_stopped_answering() -> None:
    kinds = [OK] * 7 + [SLOW] + [SILENT] * HUNG_MIN_REQUESTS
    first = f"read timed out, {NO_ANSWER_BYTE} (SocketTimeoutError)"
    assert hung_endpoint(_ended(kinds), 2) == (7, HUNG_MIN_REQUESTS, first)
    assert hung_endpoint(_ended([SILENT] * HUNG_MIN_REQUESTS), 8) == (0, HUNG_MIN_REQUESTS, first)


@pytest.mark.parametrize(("kinds", "concurrency"), [
    ([OK] * 10, 4),
    ([OK] * 10 + [SILENT] * (HUNG_MIN_REQUESTS - 1), 1),  # a short run: measured timeouts
    ([OK] * 10 + [SILENT] * 6, 8),  # fewer than were in flight
    ([OK, SILENT] * 10, 1),  # some answered between them: the endpoint answers, slowly or partly
    ([OK] * 4 + [SLOW] * 10, 1),  # answers began: a slow endpoint, not a silent one
    ([SILENT] * 10 + [OK], 1),  # it answered again before the shard ended
    ([SILENT] * (HUNG_MIN_REQUESTS - 1), 1),  # every request, but too few to tell a hung endpoint
], ids=["none", "short", "under-concurrency", "interleaved", "slow-answers", "came-back", "too-few"])
def test_timeouts_of_an_endpoint_that_answers_are_measurements(kinds: list[str | None], concurrency: int) -> None:
    assert hung_endpoint(_ended(kinds), concurrency) is None


def _note(run: RunInfo, sid: str, stamp: str, reason: str, before: int) -> None:
    note = SetAside(shard_id=sid, records=f"{sid}.failed-{stamp}.parquet", reason=reason, requests=20,
                    sent_before=before, started_at=f"2026-12-05T{stamp}", ended_at=f"2026-12-05T{stamp}")
    storage.write_text(run.path("shards", f"{sid}.failed-{stamp}.json"), note.model_dump_json())


def test_set_aside_attempts_become_one_warning_per_shard_in_the_order_they_ran(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = RunInfo(name="n", run_id="r", url=str(tmp_path / "r"), scratch=str(tmp_path / "s"))
    assert set_aside_warnings(run) == []  # no shards directory yet
    _note(run, "a__d__1-9__c2", "130200", "all 20 requests failed to connect (refused)", 0)
    _note(run, "a__d__1-9__c2", "130100", "the endpoint stopped accepting connections after 6 of its 20 requests", 6)
    _note(run, "b__d__1-9__c2", "130300", "all 20 requests failed to connect (reset)", 0)
    storage.write_text(run.path("shards", "a__d__1-9__c2.json"), "{}")  # a shard's outcome: not a note
    storage.write_text(run.path("shards", "c__d__1-9__c2.failed-130400.json"), "not json")
    with caplog.at_level(logging.WARNING, logger="fmbench"):
        lines = set_aside_warnings(run)
    assert len(lines) == 2
    first, second = lines
    assert first.startswith("shard a__d__1-9__c2: 2 attempts set aside, the endpoint could not be reached or "
                            "did not answer")
    assert first.index("after 6 of its 20") < first.index("all 20 requests failed")
    assert "shards/a__d__1-9__c2.failed-130100.parquet, shards/a__d__1-9__c2.failed-130200.parquet" in first
    assert second.startswith("shard b__d__1-9__c2: 1 attempt set aside")
    assert "c__d__1-9__c2.failed-130400.json: not read" in caplog.text
