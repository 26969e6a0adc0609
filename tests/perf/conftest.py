"""Fixtures for the performance tests: a tiny real ONNX model and migrated SQLite records."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

# bench/ is not an installed package: its client is imported from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    """(N, 3, 8, 8) -> (N, 3) logits: a 1x1 convolution and a global average pool."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((3, 3, 1, 1)).astype(np.float32), "weight")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "weight"], ["conv"]),
            helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture
def sqlite_engine(tmp_path: Path):
    from service.db.migrate import upgrade
    from service.db.session import make_engine

    url = f"sqlite:///{tmp_path / 'records.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()
