"""The ONNX Runtime thread policy: two sessions (spinning, parked) and the faster one serves."""

from __future__ import annotations

import numpy as np
import pytest

from service.inference.onnx_runtime import OnnxRuntime
from service.inference.thread_policy import FastestVariant


def test_every_variant_is_tried_then_the_fastest_serves_and_the_other_is_re_measured():
    policy = FastestVariant(("parked", "spinning"), explore_every=5)
    cost = {"parked": 0.035, "spinning": 0.028}
    picks = []
    for _ in range(40):
        name = policy.pick()
        picks.append(name)
        policy.observe(name, cost[name])
    assert picks[:2] == ["parked", "spinning"]
    assert policy.current == "spinning"
    assert 4 <= picks[2:].count("parked") <= 10  # explored every 5th call, never more
    assert policy.estimates() == pytest.approx(cost)


def test_a_change_of_load_moves_the_choice_within_a_few_explorations():
    policy = FastestVariant(("parked", "spinning"), window=3, explore_every=4)
    cost = {"parked": 0.035, "spinning": 0.028}
    for _ in range(20):
        name = policy.pick()
        policy.observe(name, cost[name])
    assert policy.current == "spinning"
    cost = {"parked": 0.050, "spinning": 0.100}  # other processes took the cores: spinning stalls
    for _ in range(6):
        name = policy.pick()
        policy.observe(name, cost[name])
    assert policy.current == "parked"
    cost = {"parked": 0.035, "spinning": 0.028}  # idle again
    for _ in range(4 * 4):
        name = policy.pick()
        policy.observe(name, cost[name])
    assert policy.current == "spinning"


def test_invalid_policy_arguments_are_refused():
    with pytest.raises(ValueError, match="explore_every"):
        FastestVariant(("a", "b"), explore_every=1)


def test_adaptive_runtime_builds_both_sessions_and_they_agree(tiny_onnx):
    runtime = OnnxRuntime(tiny_onnx, threads=2)
    assert set(runtime.thread_policy.names) == {"parked", "spinning"}
    batch = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    results = [runtime.predict_logits(batch) for _ in range(4)]
    assert all(value is not None for value in runtime.thread_policy.estimates().values())
    for logits in results[1:]:
        np.testing.assert_allclose(logits, results[0], rtol=1e-6, atol=1e-6)
    assert results[0].shape == (2, 3)


@pytest.mark.parametrize(
    ("threads", "spinning", "variants"),
    [(1, "auto", ("parked",)), (2, "off", ("parked",)), (2, "on", ("spinning",))],
)
def test_one_session_when_there_is_nothing_to_choose(tiny_onnx, threads, spinning, variants):
    runtime = OnnxRuntime(tiny_onnx, threads=threads, spinning=spinning)
    assert runtime.thread_policy.names == variants
    logits = runtime.predict_logits(np.zeros((1, 3, 8, 8), dtype=np.float32))
    assert logits.shape == (1, 3)


def test_unknown_spinning_setting_is_refused(tiny_onnx):
    with pytest.raises(ValueError, match="spinning must be auto, on or off"):
        OnnxRuntime(tiny_onnx, spinning="sometimes")
