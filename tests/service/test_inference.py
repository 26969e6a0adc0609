"""Runtimes, the micro-batcher and the volume rule, on the real test bundles."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from PIL import Image

from kdoct.bundle import load_bundle
from kdoct.preprocess import preprocess_batch
from kdoct.probabilities import softmax
from service.inference.batcher import Batcher, InferenceError, InferenceTimeout, QueueFull
from service.inference.runtime import build_runtime
from service.inference.volume import aggregate_volume


@pytest.fixture(scope="module")
def student_inputs(bundles, jpeg_paths) -> np.ndarray:
    images = []
    for path in jpeg_paths:
        with Image.open(path) as image:
            images.append(image.convert("L"))
    return preprocess_batch(images, load_bundle(bundles["student"]).preprocess)


@pytest.fixture(scope="module")
def onnx_runtime(bundles):
    return build_runtime(load_bundle(bundles["student"]), "onnx", "cpu", threads=1)


def make_batcher(runtime, **options) -> Batcher:
    values = {
        "model_label": "test",
        "max_batch_size": 8,
        "max_wait_s": 0.0,
        "max_queue": 64,
        "timeout_s": 10.0,
    }
    values.update(options)
    return Batcher(runtime, num_classes=3, **values)


def test_onnx_and_torch_fp32_agree_within_1e4(bundles, student_inputs, onnx_runtime):
    torch_runtime = build_runtime(load_bundle(bundles["student"]), "torch", "cpu", threads=1)
    onnx_probabilities = softmax(onnx_runtime.predict_logits(student_inputs))
    torch_probabilities = softmax(torch_runtime.predict_logits(student_inputs))
    assert np.abs(onnx_probabilities - torch_probabilities).max() <= 1e-4


def test_batched_requests_get_the_same_logits_as_single_ones(onnx_runtime, student_inputs):
    single = np.concatenate([onnx_runtime.predict_logits(row[None]) for row in student_inputs])

    async def scenario():
        batcher = make_batcher(onnx_runtime, max_wait_s=0.05)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(row[None]) for row in student_inputs))
        await batcher.stop(1.0)
        return results

    results = asyncio.run(scenario())
    np.testing.assert_allclose(np.concatenate([r.logits for r in results]), single, atol=1e-5)
    # With a wait bound, the concurrent submissions shared runtime calls.
    assert max(r.inference_s for r in results) > 0 and len({r.inference_s for r in results}) < len(results)


class FailingRuntime:
    name, device, precision, preferred_batch_size, batching_helps = "onnx", "cpu", "fp32", 8, False

    def predict(self, batch):
        raise RuntimeError("out of memory (simulated)")


class BlockingRuntime:
    name, device, precision, preferred_batch_size, batching_helps = "onnx", "cpu", "fp32", 1, False

    def __init__(self):
        self.release = threading.Event()
        self.entered = threading.Event()

    def predict(self, batch):
        self.entered.set()
        self.release.wait(5)
        return np.zeros((batch.shape[0], 3), dtype=np.float32), None


def test_a_failing_batch_fails_every_request_of_it_and_nothing_hangs(student_inputs):
    async def scenario():
        batcher = make_batcher(FailingRuntime(), max_wait_s=0.02)
        batcher.start()
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(batcher.submit(row[None]) for row in student_inputs[:4]), return_exceptions=True
            ),
            5,
        )
        await batcher.stop(1.0)
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(outcome, InferenceError) for outcome in outcomes)
    assert "RuntimeError" in str(outcomes[0])


def test_stop_answers_a_batch_still_being_gathered(onnx_runtime, student_inputs):
    """A job taken out of the queue while its batch waits for more (max_wait) is in no queue: stop()
    must wait for it, not cancel the batcher under it (a promotion's drain once left such requests to
    wait out the inference timeout)."""

    async def scenario():
        batcher = make_batcher(onnx_runtime, max_wait_s=0.5, timeout_s=20.0)
        batcher.start()
        pending = asyncio.ensure_future(batcher.submit(student_inputs[:1]))
        await asyncio.sleep(0.05)  # taken, and the batch waits for company
        began = time.monotonic()
        await batcher.stop(5.0)
        return await asyncio.wait_for(pending, 1.0), time.monotonic() - began

    answer, stopping_s = asyncio.run(scenario())
    assert answer.logits.shape == (1, 3)
    assert stopping_s < 5.0


def test_full_queue_refuses_at_once_and_a_stuck_runtime_times_out(student_inputs):
    runtime = BlockingRuntime()

    async def scenario():
        batcher = make_batcher(runtime, max_batch_size=1, max_queue=1, timeout_s=0.3)
        batcher.start()
        running = asyncio.create_task(batcher.submit(student_inputs[:1]))
        # Wait until the first request is inside the runtime (not a fixed sleep: CI machines are slow).
        assert await asyncio.to_thread(runtime.entered.wait, 10)
        queued = asyncio.create_task(batcher.submit(student_inputs[1:2]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit(student_inputs[2:3])
        outcomes = await asyncio.gather(running, queued, return_exceptions=True)
        runtime.release.set()
        await batcher.stop(1.0)
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(outcome, InferenceTimeout) for outcome in outcomes)


def test_volume_rule_keeps_a_single_cnv_frame():
    names = ("normal", "drusen", "cnv")
    frames = np.array([[0.98, 0.01, 0.01]] * 50 + [[0.2, 0.1, 0.7]])
    label, confidence, probabilities = aggregate_volume(frames, names)
    assert names[label] == "cnv" and confidence == pytest.approx(0.7)
    assert probabilities.sum() == pytest.approx(1.0) and probabilities.argmax() == 0
    assert names[aggregate_volume(frames[:50], names)[0]] == "normal"


def test_padded_batches_give_the_same_logits_and_few_shapes():
    import numpy as np
    import torch

    from kdoct.models import create_model
    from service.inference.torch_runtime import TorchRuntime, padded_size

    assert [padded_size(n) for n in (1, 2, 3, 5, 8, 9, 32, 33)] == [1, 2, 4, 8, 8, 16, 32, 64]
    torch.manual_seed(0)
    model = create_model("test_efficientnet", 3)
    padded = TorchRuntime(model, device="cpu", pad_batches=True)
    plain = TorchRuntime(model, device="cpu", pad_batches=False)
    batch = np.random.default_rng(0).standard_normal((5, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(padded.predict_logits(batch), plain.predict_logits(batch), atol=1e-5)
    assert padded.predict_logits(batch).shape == (5, 3)
    assert padded.warmup_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert padded.warmup_sizes(20) == [1, 2, 4, 8, 16, 32]
    assert plain.warmup_sizes(8) == [1, 8]
