"""`fmbench run` on a real pseudo-terminal: the live progress view draws while the run runs and
its final screen lists every shard done."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>78])")


@pytest.mark.integration
def test_fmbench_run_on_a_terminal_ends_with_every_shard_done(cli_env: dict[str, str], tmp_path: Path) -> None:
    import pexpect

    cfg = {
        "name": "livetest",
        "output": str(tmp_path / "results"),
        "buckets": [[1, 200], [200, 400]],
        "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 4, "seed": 1}],
        "experiments": [{
            "name": "exp",
            "endpoint": {"provider": "simulated", "ttft_ms": 40, "tpot_ms": 5, "output_tokens": 12, "max_batch": 8},
            "inference": {"max_tokens": 12, "stream": True},
            "concurrency_levels": [1, 2],
            "requests_per_level": 8,
            "warmup_requests": 1,
            "pricing": {"hourly_usd": 2.0},
        }],
    }
    path = tmp_path / "live.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(cli_env, TERM="xterm-256color", COLUMNS="160", LINES="50")
    child = pexpect.spawn(sys.executable, ["-m", "fmbench", "run", str(path)], env=env, cwd=str(ROOT),
                          dimensions=(50, 160), timeout=540, encoding="utf-8", codec_errors="replace")
    child.expect(pexpect.EOF)
    child.close()
    screen = child.before
    assert child.exitstatus == 0, ANSI.sub("", screen)[-3000:]
    assert "\x1b[?25l" in screen  # the live view drew (and hid the cursor) while the run ran
    # Live ends by showing the cursor again; what follows is the final table and the report line.
    final = ANSI.sub("", screen.rsplit("\x1b[?25h", 1)[-1])
    shards = [f"exp__syn__{b}__c{c}" for b in ("1-200", "200-400") for c in (1, 2)]
    assert re.search(r"run \S+: 4/4 shards finished; elapsed ", final), final
    for sid in shards:
        row = next((ln for ln in final.splitlines() if sid in ln), None)
        assert row is not None, final
        assert re.search(r"done\s+│\s+9/9\s+│\s+0\s+│", row), row
    assert re.search(r"Report: .*/report\.md", final), final
