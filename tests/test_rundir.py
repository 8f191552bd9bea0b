"""Run directories: creating, resuming, refusing a changed config, clearing a killed writer's leftovers."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from fmbench import storage
from fmbench.config import load_config_text
from fmbench.deploy import EndpointTimeline
from fmbench.errors import ConfigError
from fmbench.preflight import check_output
from fmbench.rundir import Manifest, load_manifest, open_run

CONFIG = """
name: rd
output: {out}
buckets: [[1, 200]]
datasets: [{{name: s, source: synthetic, prompts_per_bucket: 2}}]
experiments: [{{name: e, endpoint: {{provider: simulated}}, concurrency_levels: [{c}]}}]
"""


def _cfg(tmp_path: Path, c: int = 1):
    return load_config_text(CONFIG.format(out=tmp_path / "results", c=c), source="rd.yml")


def test_new_run_writes_config_and_manifest(tmp_path: Path) -> None:
    run = open_run(_cfg(tmp_path), run_id="a")
    assert not run.resumed
    assert Path(run.url) == tmp_path / "results" / "rd" / "a"
    assert Path(run.path("config.yml")).is_file()
    assert run.read_manifest().run_id == "a"


def test_manifest_keeps_endpoint_timelines_and_reads_older_manifests(tmp_path: Path) -> None:
    run = open_run(_cfg(tmp_path), run_id="t")
    run.record_endpoint(EndpointTimeline(experiment="e", provider="sagemaker", endpoint_name="fmbench-e-1",
                                         created_at="2026-01-01T00:00:00+00:00"))
    run.record_endpoint(EndpointTimeline(experiment="e", provider="sagemaker", endpoint_name="fmbench-e-1",
                                         created_at="2026-01-01T00:00:00+00:00",
                                         deleted_at="2026-01-01T01:00:00+00:00"))
    manifest = load_manifest(run.url)
    assert manifest.endpoints["e"].deleted_at == "2026-01-01T01:00:00+00:00" and manifest.run_id == "t"
    # An older manifest (no endpoints, an unknown key) still loads and keeps what it had.
    old = tmp_path / "old"
    storage.write_text(str(old / "manifest.json"), '{"run_id": "r0", "shards": [], "legacy": {"x": 1}}')
    loaded = load_manifest(str(old))
    assert loaded.endpoints == {} and loaded.model_extra == {"legacy": {"x": 1}}
    assert isinstance(loaded, Manifest)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not json {", "not valid JSON: expected ident at line 1 column 2"),
        (b'{"run_id": "r", "shards": [', "not valid JSON: EOF while parsing a list at line 1 column 27"),
        (b"", "the file is empty"),
        (b"\xff\xfe{", "not valid JSON: expected value at line 1 column 1"),
        (b"[1, 2, 3]", "top level: Input should be an object"),
        (b'{"shards": null}', "field 'shards': Input should be a valid array"),
        (b'{"shards": 1, "warnings": 2}', "field 'shards': Input should be a valid array (and 1 more problem)"),
    ],
)
def test_resuming_a_run_with_a_corrupt_manifest_says_what_is_wrong(tmp_path: Path, content: bytes,
                                                                    problem: str) -> None:
    """A manifest cannot be rebuilt, so the resume is refused; the one line says why, not just "ValidationError"."""
    from fmbench.errors import StorageError

    cfg = _cfg(tmp_path)
    run = open_run(cfg, run_id="m")
    Path(run.path("manifest.json")).write_bytes(content)
    with pytest.raises(StorageError) as err:
        open_run(cfg, run_id="m")
    assert str(err.value) == f"{run.path('manifest.json')}: not a readable manifest ({problem})"
    assert Path(run.path("manifest.json")).read_bytes() == content  # left as it was


def test_late_deletions_change_only_the_run_s_own_live_endpoints_and_only_once(tmp_path: Path) -> None:
    from fmbench.rundir import exclusive_run, record_late_deletions

    cfg = _cfg(tmp_path)
    run = open_run(cfg, run_id="late")
    created = "2026-01-01T00:00:00+00:00"
    run.record_endpoint(EndpointTimeline(experiment="e", provider="sagemaker", endpoint_name="fmbench-e-late",
                                         created_at=created))
    run.record_endpoint(EndpointTimeline(experiment="gone", provider="sagemaker", endpoint_name="fmbench-g-late",
                                         created_at=created, deleted_at="2026-01-01T00:30:00+00:00"))
    run.record_endpoint(EndpointTimeline(experiment="byo", provider="sagemaker", endpoint_name="theirs"))
    deleted = {"e": ("fmbench-e-late", "2026-01-01T02:00:00+00:00"),
               "gone": ("fmbench-g-late", "2026-01-01T02:00:00+00:00"),  # the run deleted it itself
               "byo": ("theirs", "2026-01-01T02:00:00+00:00"),  # never created by the run
               "other": ("fmbench-o-late", "2026-01-01T02:00:00+00:00")}  # not in this run
    # While the run is held by a process (its own teardown records what it deletes), nothing is changed.
    with exclusive_run(cfg, None, "late"), pytest.raises(ConfigError, match="run late is in progress"):
        record_late_deletions(run.url, "late", deleted, by="fmbench cleanup")
    assert load_manifest(run.url).endpoints["e"].deleted_at is None

    assert record_late_deletions(run.url, "late", deleted, by="fmbench cleanup") == ["e"]
    after = load_manifest(run.url)
    assert (after.endpoints["e"].deleted_at, after.endpoints["e"].deleted_by) == \
        ("2026-01-01T02:00:00+00:00", "fmbench cleanup")
    assert after.endpoints["gone"].deleted_at == "2026-01-01T00:30:00+00:00"
    assert after.endpoints["gone"].deleted_by is None
    assert after.endpoints["byo"].deleted_at is None and "other" not in after.endpoints
    manifest_text = Path(run.path("manifest.json")).read_text()

    # A second cleanup (a later deletion time, another name for the deleter) changes nothing: the first
    # deletion recorded is the end of the bill.
    again = {"e": ("fmbench-e-late", "2026-01-01T05:00:00+00:00")}
    assert record_late_deletions(run.url, "late", again, by="someone else") == []
    assert Path(run.path("manifest.json")).read_text() == manifest_text
    # A directory without a manifest (not a run) is left alone.
    assert record_late_deletions(str(tmp_path / "nothing"), "late", deleted, by="fmbench cleanup") == []
    assert not (tmp_path / "nothing" / "manifest.json").exists()


def test_a_late_deletion_of_an_earlier_attempt_s_endpoint_still_running_is_recorded_on_its_life(
        tmp_path: Path) -> None:
    from fmbench.rundir import record_late_deletions

    run = open_run(_cfg(tmp_path), run_id="left")
    left = EndpointTimeline(experiment="e", provider="sagemaker", endpoint_name="fmbench-e-left",
                            created_at="2026-01-01T00:00:00+00:00", delete_error="not adopted")
    failed = EndpointTimeline(experiment="e", provider="sagemaker", endpoint_name="fmbench-e-left",
                              created_at="2026-01-01T01:00:00+00:00", deleted_at="2026-01-01T01:01:00+00:00",
                              earlier=[left])
    run.record_endpoint(failed)
    when = "2026-01-01T02:00:00+00:00"
    assert record_late_deletions(run.url, "left", {"e": ("fmbench-e-left", when)}, by="fmbench cleanup") == ["e"]
    after = load_manifest(run.url).endpoints["e"]
    assert after.model_copy(update={"earlier": []}) == failed.model_copy(update={"earlier": []})
    assert after.earlier == [left.model_copy(update={"deleted_at": when, "deleted_by": "fmbench cleanup"})]
    assert record_late_deletions(run.url, "left", {"e": ("fmbench-e-left", when)}, by="fmbench cleanup") == []


def test_resume_with_changed_config_names_the_difference(tmp_path: Path) -> None:
    open_run(_cfg(tmp_path, c=1), run_id="a")
    with pytest.raises(ConfigError, match=r"run a exists with a different config .*concurrency_levels"):
        open_run(_cfg(tmp_path, c=2), run_id="a")


def test_a_directory_with_shards_but_no_manifest_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """Without its manifest nothing says which config measured the shards: resuming took them as this
    config's and wrote this config over the directory's config.yml."""
    run = open_run(_cfg(tmp_path, c=1), run_id="m")
    Path(run.path("shards")).mkdir()
    Path(run.path("shards", "e__s__1-200__c1.json")).write_text("{}")
    Path(run.path("manifest.json")).unlink()
    before = Path(run.path("config.yml")).read_text()
    with pytest.raises(ConfigError, match=r"holds measured shards but no manifest.json"):
        open_run(_cfg(tmp_path, c=2), run_id="m")
    assert Path(run.path("config.yml")).read_text() == before
    Path(run.path("shards", "e__s__1-200__c1.json")).unlink()  # nothing measured: the directory is taken
    assert not open_run(_cfg(tmp_path, c=2), run_id="m").resumed


def test_bad_run_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--run-id"):
        open_run(_cfg(tmp_path), run_id="../x")


def test_an_output_url_must_name_a_place_and_a_file_url_is_its_local_path(tmp_path: Path) -> None:
    # "s3://" alone once became a local directory named "s3:", and "file:///x" a relative "file:/x".
    with pytest.raises(ConfigError, match=r"output: .*give a bucket \(s3://bucket/prefix\)"):
        load_config_text(CONFIG.format(out="s3://", c=1), source="rd.yml")
    with pytest.raises(ConfigError, match=r"output 's3:///runs': give a bucket"):
        open_run(_cfg(tmp_path), output="s3:///runs", run_id="a")
    with pytest.raises(ConfigError, match="output 's3://': give a bucket"):
        check_output(_cfg(tmp_path), "s3://", None)
    run = open_run(_cfg(tmp_path), output=f"file://{tmp_path}/viafile", run_id="a")
    assert Path(run.url) == tmp_path / "viafile" / "rd" / "a" and Path(run.path("config.yml")).is_file()
    check_output(_cfg(tmp_path), f"file://{tmp_path}/viafile", None)


def test_resume_clears_temp_files_of_a_killed_writer(tmp_path: Path) -> None:
    run = open_run(_cfg(tmp_path), run_id="a")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = Path(run.url) / f".metrics.csv.{dead.pid}-0123abcd.tmp"
    orphan.write_text("half a csv")
    storage.write_text(run.path("metrics.parquet"), "whole")
    resumed = open_run(_cfg(tmp_path), run_id="a")
    assert resumed.resumed
    assert not orphan.exists()
    assert Path(run.path("metrics.parquet")).read_text() == "whole"


def test_a_resumed_run_whose_dataset_file_changed_is_refused_and_its_shards_kept(tmp_path: Path) -> None:
    """A shard measured before an interruption was measured with the run's stored prompts; a resume
    that re-reads a dataset file edited since would measure the rest with other prompts, and one
    bucket's numbers would mix the two. It is refused with one line, the measured shards untouched;
    the same data resumes."""
    from fmbench.errors import DatasetError
    from fmbench.pipeline import run_benchmark

    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"prompt": "question number {i} about the weather"}}\n' for i in range(6)))
    cfg = load_config_text(f"""
name: resume
output: {tmp_path / 'results'}
buckets: [[1, 100]]
datasets:
  - {{name: d, source: jsonl, path: {data}}}
experiments:
  - name: e
    endpoint: {{provider: simulated, ttft_ms: 2, tpot_ms: 1, output_tokens: 3}}
    concurrency_levels: [1, 2]
    requests_per_level: 3
    warmup_requests: 0
""")
    run_benchmark(cfg, run_id="r")
    shards = tmp_path / "results" / "resume" / "r" / "shards"
    kept = {p.name: p.read_bytes() for p in shards.glob("*.parquet")}
    assert len(kept) == 2
    run_benchmark(cfg, run_id="r")  # the same data: resumes (nothing left to measure)
    data.write_text(data.read_text().replace("weather", "tides"))
    with pytest.raises(DatasetError, match=r"datasets\[d\]: bucket 1-100 no longer has the prompts run r was "
                                           r"measured with"):
        run_benchmark(cfg, run_id="r")
    assert {p.name: p.read_bytes() for p in shards.glob("*.parquet")} == kept


def test_a_run_is_held_by_one_process_at_a_time_and_released_when_it_ends(tmp_path: Path) -> None:
    from fmbench.rundir import exclusive_run, live_on_this_host, run_lock_file

    cfg = _cfg(tmp_path)
    with exclusive_run(cfg, None, "a"):
        lock = run_lock_file(str((tmp_path / "results" / "rd" / "a").resolve()))
        assert lock.read_text().startswith(f"pid {os.getpid()} on ")
        with pytest.raises(ConfigError, match=r"run a is in progress \(pid \d+ on .+\); wait for it to end"), \
                exclusive_run(cfg, None, "a"):
            pass  # (a second open file: flock refuses it as it would another process)
        with exclusive_run(cfg, None, "b"):  # another run of the same config is another run
            pass
    with exclusive_run(cfg, None, "a"):  # released
        pass
    # The same run id and config name with another output: the same tags on what it deploys, so the
    # same run to `fmbench cleanup`; refused while the first is in progress.
    other = cfg.model_copy(update={"output": str(tmp_path / "elsewhere")})
    with exclusive_run(cfg, None, "c"):
        assert live_on_this_host(cfg.name, "c") == f"pid {os.getpid()} on {platform.node()}"
        assert live_on_this_host(cfg.name, "d") is None and live_on_this_host("other-config", "c") is None
        with pytest.raises(ConfigError, match=r"run c of 'rd' is in progress \(pid \d+ on .+\)"), \
                exclusive_run(other, None, "c"):
            pass
    assert live_on_this_host(cfg.name, "c") is None  # ended
    # The lock lives outside the run: a run directory looks the same locally and in S3.
    assert not (tmp_path / "results").exists()


def test_a_run_s_lock_on_this_host_says_where_it_was_stored_after_it_ended(tmp_path: Path) -> None:
    """For `fmbench cleanup` without the config: where this host last ran a run, checked against the
    manifest there (the lock directory is every user's)."""
    from fmbench.rundir import exclusive_run, is_run_of, live_lock_file, open_run, run_url_on_this_host

    cfg = _cfg(tmp_path)
    elsewhere = str(tmp_path / "elsewhere")
    run = open_run(cfg, elsewhere, run_id="w")
    with exclusive_run(cfg, elsewhere, "w"):
        assert run_url_on_this_host(cfg.name, "w") == run.url
    assert run_url_on_this_host(cfg.name, "w") == run.url  # (ended: still said)
    assert is_run_of(run.url, cfg.name, "w")
    assert not is_run_of(run.url, cfg.name, "x") and not is_run_of(run.url, "other-config", "w")
    assert not is_run_of(str(tmp_path / "nothing"), cfg.name, "w")
    (Path(run.url) / "manifest.json").write_text("{not json")
    assert not is_run_of(run.url, cfg.name, "w")  # (unreadable: not one to write into)
    assert run_url_on_this_host(cfg.name, "never-here") is None
    live_lock_file(cfg.name, "older").parent.mkdir(parents=True, exist_ok=True)
    live_lock_file(cfg.name, "older").write_text("pid 1 on somewhere")  # (an older fmbench's lock: no directory)
    assert run_url_on_this_host(cfg.name, "older") is None
