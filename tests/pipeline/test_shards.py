"""A resumed run's view of its measured shards: a shard whose outcome or records cannot be read is
set aside and measured again, and an intact one is not downloaded again while it is unchanged, on a
local directory and on S3 alike."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from fmbench import storage
from fmbench.errors import StorageError
from fmbench.pipeline import shards
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


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every whole-file read from the store from now on, by URL."""
    reads: Counter[str] = Counter()
    read = storage.read_bytes

    def counted(url: str) -> bytes:
        reads[url] += 1
        return read(url)

    monkeypatch.setattr(storage, "read_bytes", counted)
    return reads


def test_an_intact_shard_is_not_read_again_while_unchanged(run: RunInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed run asks for each shard more than once (whether to deploy, then as it runs): its records
    are downloaded once, not at every ask."""
    outcome_url, records_url = _measured(run)
    reads = _count_reads(monkeypatch)
    first = finished_shard(run, SID)
    assert reads == {outcome_url: 1, records_url: 1}
    assert first is not None
    first.requests = 99  # a caller's copy: changing it changes nothing remembered
    for _ in range(3):
        again = finished_shard(run, SID)
        assert again is not None and again.cached and again.requests == 2
    assert reads == {outcome_url: 1, records_url: 1}


def test_records_damaged_after_the_shard_was_found_intact_are_noticed(
    run: RunInfo, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    outcome_url, records_url = _measured(run)
    assert finished_shard(run, SID) is not None
    outcome, data = storage.read_bytes(outcome_url), storage.read_bytes(records_url)
    garbage = b"x" * len(data)  # the same size, written at once: only its content differs
    storage.write_bytes(records_url, garbage)
    reads = _count_reads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="fmbench"):
        assert finished_shard(run, SID) is None
    assert reads == {outcome_url: 1, records_url: 1}  # checked again in full
    assert _set_aside(run) == {f"{SID}.json": outcome, f"{SID}.parquet": garbage}
    (line,) = [r.getMessage() for r in caplog.records if r.name == "fmbench"]
    assert line.startswith(f"shard {SID}: its records {records_url} are not readable parquet (")
    assert finished_shard(run, SID) is None


def test_records_removed_after_the_shard_was_found_intact_are_noticed(run: RunInfo) -> None:
    outcome_url, records_url = _measured(run)
    assert finished_shard(run, SID) is not None
    storage.remove(records_url)
    assert finished_shard(run, SID) is None
    assert list(_set_aside(run)) == [f"{SID}.json"] and not storage.exists(outcome_url)


def test_a_rewritten_outcome_is_read_again(run: RunInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shard measured again (or its outcome replaced) after it was found intact: the new outcome
    counts, even when its file has the old one's size."""
    outcome_url, records_url = _measured(run)
    old = finished_shard(run, SID)
    assert old is not None and old.requests == 2
    new = old.model_copy(update={"requests": 3, "errors": 1, "cached": False})
    text = new.model_dump_json()
    assert len(text) == len(old.model_copy(update={"cached": False}).model_dump_json())
    storage.write_text(outcome_url, text)
    reads = _count_reads(monkeypatch)
    again = finished_shard(run, SID)
    assert again is not None and again.cached and (again.requests, again.errors) == (3, 1)
    assert reads == {outcome_url: 1, records_url: 1}
    assert finished_shard(run, SID) == again and reads == {outcome_url: 1, records_url: 1}
    assert _set_aside(run) == {}


def test_remembered_shards_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the limit the oldest shard found intact is forgotten (checked in full when asked again)."""
    monkeypatch.setattr(shards, "_INTACT_LIMIT", 2)
    runs = [RunInfo(name="n", run_id=f"r{i}", url=str(tmp_path / f"r{i}"), scratch=str(tmp_path / "s"))
            for i in range(3)]
    urls = [_measured(r)[1] for r in runs]
    for r in runs:
        assert finished_shard(r, SID) is not None
    reads = _count_reads(monkeypatch)
    for r in runs[1:] + runs[:1]:
        assert finished_shard(r, SID) is not None
    assert [reads[u] for u in urls] == [1, 0, 0]
