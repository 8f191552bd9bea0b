"""The load engine: closed-loop concurrency and open-loop arrival rates, measured without bias.

Entry points: `run_shard` (sync, fresh event loop) and `run_shard_async`; a shard is described by
`ShardSpec` and summarised by `ShardResult`, with one `fmbench.records.RequestRecord` per request
streamed to a parquet file by `RecordWriter`. The servers it is measured against live beside it in
`fmbench.simulator` (`fmbench.simulator.zeroserver.ZeroServer` measures the client itself).
"""

from __future__ import annotations

from fmbench.loadgen.engine import arrival_gaps, run_shard, run_shard_async
from fmbench.loadgen.spec import ShardResult, ShardSpec
from fmbench.loadgen.writer import RecordWriter, partial_path

__all__ = [
    "RecordWriter",
    "ShardResult",
    "ShardSpec",
    "arrival_gaps",
    "partial_path",
    "run_shard",
    "run_shard_async",
]
