"""A resumed run's view of its measured shards: a shard whose outcome or records cannot be read is
set aside and measured again, on a local directory and on S3 alike."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pytest

from fmbench import storage
from fmbench.errors import StorageError
from fmbench.pipeline.shards import ShardOutcome, finished_shard
from fmbench.rundir import RunInfo

SID = "e__syn__1-300__c1"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])  # s3: moto
def run(request: pytest.FixtureRequest, tmp_path: Path) -> RunInfo:
    url = str(tmp_path / "r") if request.param == "local" else request.getfixturevalue("s3_bucket") + "/r"
    return RunInfo(name="n", run_id="r", url=url, scratch=str(tmp_path / "scratch"))


def _measured(run: RunInfo) -> tuple[str, str]:
    """A shard as `execute_shard` leaves it: its records parquet and its outcome json."""
    records = run.path("shards", f"{SID}.parquet")
    storage.write_parquet(records, pl.DataFrame({"request_id": [0, 1]}))
    outcome = ShardOutcome(shard_id=SID, experiment="e", dataset="syn", bucket="1-300", concurrency=1,
                           status="ok", requests=2, records_url=records)
    storage.write_text(run.shard_result(SID), outcome.model_dump_json())
    return run.shard_result(SID), records


def _set_aside(run: RunInfo) -> dict[str, bytes]:
    """The shard's files renamed ``NAME.corrupt-STAMP``, by their original name."""
    return {f.rsplit("/", 1)[-1].split(".corrupt-")[0]: storage.read_bytes(f)
            for f in storage.list_files(run.path("shards")) if ".corrupt-" in f}


def test_an_intact_shard_is_reused(run: RunInfo) -> None:
    _measured(run)
    done = finished_shard(run, SID)
    assert done is not None and done.cached and done.requests == 2
    assert _set_aside(run) == {}


@pytest.mark.parametrize("content", [b"garbage\n", b"", b'{"shard_id": "x"}', b'{"shard_id": '])
def test_an_unreadable_outcome_is_set_aside_and_the_shard_measured_again(
    run: RunInfo, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    outcome_url, records_url = _measured(run)
    records = storage.read_bytes(records_url)
    storage.write_bytes(outcome_url, content)
    with caplog.at_level(logging.WARNING, logger="fmbench"):
        assert finished_shard(run, SID) is None
    # Nothing is deleted: both files are kept under new names, and the shard no longer counts as measured.
    assert _set_aside(run) == {f"{SID}.json": content, f"{SID}.parquet": records}
    assert not storage.exists(outcome_url) and not storage.exists(records_url)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "fmbench"]
    assert line.startswith(f"shard {SID}: its outcome {outcome_url} is not readable (")
    assert f"; measuring it again (set aside as {outcome_url}.corrupt-" in line and f"{records_url}.corrupt-" in line
    assert finished_shard(run, SID) is None  # and stays so until it is measured again


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_a_shard_whose_records_are_unreadable_is_set_aside_and_measured_again(
    run: RunInfo, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    outcome_url, records_url = _measured(run)
    outcome = storage.read_bytes(outcome_url)
    if damage == "missing":
        storage.remove(records_url)
    else:
        data = storage.read_bytes(records_url)
        storage.write_bytes(records_url, data[: len(data) // 2] if damage == "truncated" else b"not parquet")
    with caplog.at_level(logging.WARNING, logger="fmbench"):
        assert finished_shard(run, SID) is None
    kept = _set_aside(run)
    assert kept[f"{SID}.json"] == outcome and (f"{SID}.parquet" in kept) == (damage != "missing")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "fmbench"]
    reason = "are missing" if damage == "missing" else "are not readable parquet ("
    assert line.startswith(f"shard {SID}: its records {records_url} {reason}")


def test_an_unreachable_store_sets_nothing_aside(run: RunInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that fails for the store's sake says nothing about the files: the error stands."""
    outcome_url, _ = _measured(run)

    def unreachable(url: str) -> bytes:
        raise StorageError(f"{url}: cannot read: EndpointConnectionError")

    monkeypatch.setattr(storage, "read_bytes", unreachable)
    with pytest.raises(StorageError, match="cannot read"):
        finished_shard(run, SID)
    monkeypatch.undo()
    assert _set_aside(run) == {} and storage.exists(outcome_url)
