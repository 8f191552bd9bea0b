"""fmbench's own performance benchmarks (`make bench` runs `benchmarks.run_all`); scripts that measure and print."""
