"""Put on PYTHONPATH of a service process by bench/fixes.py: with KDOCT_BENCH_ORT_SPINNING=1 every
ONNX Runtime session lets its idle threads spin (ORT's default, the service's setting before the fix),
so the before/after comparison runs the same code otherwise."""

import os

if os.environ.get("KDOCT_BENCH_ORT_SPINNING") == "1":
    import onnxruntime

    class _SpinningSessionOptions(onnxruntime.SessionOptions):
        def add_session_config_entry(self, key: str, value: str) -> None:
            if key == "session.intra_op.allow_spinning":
                value = "1"
            super().add_session_config_entry(key, value)

    onnxruntime.SessionOptions = _SpinningSessionOptions
