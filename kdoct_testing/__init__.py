"""Support code shared by the tests (tests/) and the benchmarks (bench/): the service as a subprocess
(server), throwaway PostgreSQL (postgres), bundles with random weights (bundles), a lean HTTP load
client (load_client) and process memory from /proc (memory). Not part of the installed distribution:
the tests and `python -m bench` import it from the repository root."""
