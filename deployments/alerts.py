"""Apply the automations of deployments/automations.yaml to the Prefect server (PREFECT_API_URL),
sending their notifications through the block named by FMBENCH_NOTIFY_BLOCK (or --block).

    FMBENCH_NOTIFY_BLOCK=slack-webhook/benchmarks uv run --no-sync python deployments/alerts.py

An automation with the same name is replaced, so applying again does not duplicate it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def load_automations(path: Path, block_document_id: str) -> list[dict[str, Any]]:
    """The automations of ``path`` with every notification sent through the given block."""
    automations = yaml.safe_load(path.read_text())["automations"]
    for automation in automations:
        for action in automation["actions"]:
            if action["type"] == "send-notification":
                action["block_document_id"] = block_document_id
    return automations


def apply_automations(block_slug: str, path: Path = HERE / "automations.yaml") -> list[str]:
    """Create (or replace) each automation; returns their ids.

    Raises:
        SystemExit: the block does not exist (one line naming it).
    """
    from prefect.automations import Automation
    from prefect.blocks.core import Block
    from prefect.exceptions import ObjectNotFound

    try:
        block = Block.load(block_slug)
    except (ValueError, ObjectNotFound) as exc:
        raise SystemExit(f"alerts: notification block {block_slug!r} not found ({exc}); create it in the UI "
                         "(Blocks) or with its Python class, then deploy again") from exc
    ids = []
    for spec in load_automations(path, str(block._block_document_id)):
        while True:  # replace every earlier copy
            try:
                Automation.read(name=spec["name"]).delete()
            except ValueError:
                break
        ids.append(str(Automation.model_validate(spec).create().id))
    return ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--block", default=os.environ.get("FMBENCH_NOTIFY_BLOCK"),
                   help="notification block as TYPE/NAME (default: $FMBENCH_NOTIFY_BLOCK)")
    p.add_argument("--file", type=Path, default=HERE / "automations.yaml")
    args = p.parse_args(argv)
    if not args.block:
        print("alerts: FMBENCH_NOTIFY_BLOCK is not set, no automations applied (set it to a notification "
              "block, e.g. slack-webhook/benchmarks, to be told about regressions)")
        return 0
    for automation_id in apply_automations(args.block, args.file):
        print(f"alerts: automation {automation_id} notifies through {args.block}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
