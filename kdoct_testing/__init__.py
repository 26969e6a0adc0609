"""Support code for the tests (tests/), partly shared with the benchmarks (bench/): the service as a
subprocess (server), throwaway PostgreSQL (postgres), bundles with random weights (bundles), OCT DICOM
and encoded images to upload (uploads), a lean HTTP load client (load_client) and process memory from
/proc (memory). Not part of the installed distribution: the tests and `python -m bench` import it from
the repository root."""
