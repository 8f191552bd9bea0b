"""Run storage: the same calls work on a local directory and on S3 (moto server over real HTTP)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from fmbench import storage
from fmbench.errors import StorageError


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])  # s3: moto
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "runs")
    return request.getfixturevalue("s3_bucket") + "/runs"


def test_round_trip_text_bytes_parquet(base: str) -> None:
    storage.write_text(storage.join(base, "a", "config.yml"), "name: x\n")
    storage.write_bytes(storage.join(base, "a", "blob.bin"), b"\x00\x01")
    storage.write_parquet(storage.join(base, "a", "r.parquet"), pl.DataFrame({"x": [1, 2]}))
    assert storage.read_text(storage.join(base, "a", "config.yml")) == "name: x\n"
    assert storage.read_bytes(storage.join(base, "a", "blob.bin")) == b"\x00\x01"
    assert storage.read_parquet(storage.join(base, "a", "r.parquet"))["x"].to_list() == [1, 2]
    names = [p.rsplit("/", 1)[-1] for p in storage.list_files(storage.join(base, "a"))]
    assert names == ["blob.bin", "config.yml", "r.parquet"]
    assert storage.list_files(storage.join(base, "a"), ".parquet")[0].endswith("r.parquet")
    assert storage.exists(storage.join(base, "a", "r.parquet"))
    assert not storage.exists(storage.join(base, "a", "nope"))


def test_overwrite_replaces_whole_file(base: str) -> None:
    url = storage.join(base, "m.json")
    storage.write_text(url, "x" * 1000)
    storage.write_text(url, "short")
    assert storage.read_text(url) == "short"


def test_move_renames_one_file(base: str) -> None:
    src, dst = storage.join(base, "s", "a.json"), storage.join(base, "s", "a.json.corrupt-1")
    storage.write_text(src, "{")
    storage.move(src, dst)
    assert not storage.exists(src) and storage.read_text(dst) == "{"
    with pytest.raises(StorageError, match="not found"):
        storage.move(src, dst)


def test_local_write_leaves_no_temp_files(tmp_path: Path) -> None:
    for i in range(5):
        storage.write_text(str(tmp_path / "f.txt"), str(i))
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_orphaned_temp_files_of_dead_writers_are_removed_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now names no process (reaped)
    run = tmp_path / "run"
    (run / "shards").mkdir(parents=True)
    orphan = run / f".metrics.csv.{dead.pid}-0123abcd.tmp"
    nested = run / "shards" / f".s1.json.{dead.pid}-89abcdef.tmp"
    live = run / f".report.md.{os.getpid()}-00000000.tmp"
    foreign = run / ".notes.tmp"  # not our naming: left alone
    for f in (orphan, nested, live, foreign):
        f.write_text("half")
    storage.write_text(str(run / "metrics.csv"), "a,b\n")
    removed = storage.remove_orphaned_temp_files(str(run))
    assert sorted(removed) == sorted([str(orphan), str(nested)])
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == sorted([live.name, foreign.name, "metrics.csv"])


def test_a_version_marks_a_files_content_without_reading_it(base: str) -> None:
    url, other = storage.join(base, "v", "s.json"), storage.join(base, "v", "t.json")
    assert storage.version(url) is None
    storage.write_text(url, "aaaa")
    storage.write_text(other, "aaaa")
    v = storage.version(url)
    assert v is not None and storage.version(url) == v
    storage.write_text(url, "bbbb")  # the same size, at once
    assert storage.version(url) not in (None, v)
    storage.remove(url)
    assert storage.version(url) is None
    assert storage.version(storage.join(base, "v")) is None  # a directory is no file
    assert storage.version(storage.join(base, "v", "t.json", "x")) is None  # nor is a path through a file


def test_a_version_on_an_unreachable_store_is_a_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import s3fs

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
                        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(StorageError, match="s3://fmbench-none/x.json: cannot check: "):
            storage.version("s3://fmbench-none/x.json")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_missing_file_is_a_storage_error(base: str) -> None:
    with pytest.raises(StorageError, match="not found"):
        storage.read_text(storage.join(base, "missing.txt"))


def test_missing_bucket_is_a_clear_error(s3_env: str) -> None:
    with pytest.raises(StorageError, match="s3://no-such-bucket-fmb/x.txt"):
        storage.write_text("s3://no-such-bucket-fmb/x.txt", "x")


def test_empty_listing_of_missing_directory(base: str) -> None:
    assert storage.list_files(storage.join(base, "none")) == []


def test_a_local_output_is_checked_without_creating_anything(tmp_path: Path) -> None:
    """`check_location` on a local path: a directory to be made under a writable one passes (and is
    not made); a path that is, or goes through, a file is a StorageError naming the file; so is a
    write under it."""
    from fmbench.storage import check_location, write_bytes

    check_location(str(tmp_path / "results" / "nested"))
    assert not (tmp_path / "results").exists()
    check_location(str(tmp_path))
    (tmp_path / "file").write_text("x")
    for url in (tmp_path / "file", tmp_path / "file" / "results"):
        with pytest.raises(StorageError, match=f"{tmp_path / 'file'} is not a directory"):
            check_location(str(url))
    with pytest.raises(StorageError, match="cannot write"):
        write_bytes(str(tmp_path / "file" / "run" / "manifest.json"), b"{}")
