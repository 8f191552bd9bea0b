import numpy as np, polars as pl, time, resource, sys
from fmbench.config import parse_config
from fmbench.records import REQUEST_SCHEMA
from fmbench.metrics import summarize
n=1_000_000
if sys.argv[1]=="gen":
    rng=np.random.default_rng(0)
    shards=200
    sid=rng.integers(0,shards,n)
    lat=rng.gamma(2.0,0.5,n)
    t0=rng.uniform(0,1000,n)
    df=pl.DataFrame({
     "experiment":pl.Series([f"e{i%4}" for i in range(shards)]).gather(sid % 200),
     "dataset":["d"]*n, "bucket":pl.Series(["1-500","500-1000"]).gather(sid%2), "bucket_min":pl.Series([1,500]).gather(sid%2),
     "bucket_max":pl.Series([500,1000]).gather(sid%2), "concurrency":(sid//8+1).astype(np.int64), "request_rate":[None]*n,
     "shard_id":pl.Series([f"s{i}" for i in range(shards)]).gather(sid), "request_id":np.arange(n), "prompt_id":["p"]*n,"attempt":[1]*n,
     "warmup":rng.random(n)<0.01, "ok":rng.random(n)>0.02, "error_kind":[None]*n,"error":[None]*n,"http_status":[200]*n,
     "input_tokens":rng.integers(1,1000,n),"output_tokens":rng.integers(1,200,n),"usage_source":["server"]*n,
     "t_scheduled":t0,"t_start":t0,"t_first_token":t0+0.1,"t_end":t0+lat,"send_lag_s":np.zeros(n),"ttft_s":np.full(n,0.1),
     "latency_s":lat,"tpot_s":lat/100,"itl_s":[[0.01,0.02]]*n,"chunks":[2]*n}, schema=REQUEST_SCHEMA)
    df.write_parquet("/tmp/req1m.parquet"); print("written")
else:
    cfg = parse_config({"name":"t","buckets":[[1,500],[500,1000]],"datasets":[{"name":"d","source":"synthetic"}],
      "experiments":[{"name":f"e{i}","endpoint":{"provider":"simulated"},"pricing":{"hourly_usd":2.0}} for i in range(4)]})
    t=time.perf_counter()
    m=summarize(pl.scan_parquet("/tmp/req1m.parquet"), cfg)
    print(m.shape, "s", time.perf_counter()-t, "peak MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)
