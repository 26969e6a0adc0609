"""Grad-CAM on real B-scans with timm's tiny EfficientNet and ConvNeXt, checked against an independent
hook-based computation."""

from __future__ import annotations

import asyncio
import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from kdoct.preprocess import preprocess_array
from service.explain import (
    OVERLAY_MAX_SIDE,
    Explainer,
    ExplainerBusy,
    GradCam,
    colorize,
    overlay_heatmap,
    target_layer_name,
)

FEATURE_STRIDE = 32


@pytest.fixture(params=["test_efficientnet", "test_convnext"])
def gradcam(request, explain_bundles) -> GradCam:
    return GradCam(explain_bundles[request.param])


def _reference_gradcam(model, batch: torch.Tensor, class_index: int) -> np.ndarray:
    """Textbook Grad-CAM: hook the target module, back-propagate the class score through the whole net."""
    module = model.bn2 if hasattr(model, "conv_head") else model.stages[-1]
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["activation"] = output

    handle = module.register_forward_hook(keep)
    try:
        logits = model(batch)
        logits[0, class_index].backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    activation = captured["activation"][0].detach().numpy()
    gradient = captured["activation"].grad[0].numpy()
    cam = np.maximum(np.tensordot(gradient.mean(axis=(1, 2)), activation, axes=1), 0.0)
    return (cam - cam.min()) / (cam.max() - cam.min())


def test_map_shape_and_range(gradcam: GradCam, real_bscan: Image.Image) -> None:
    maps, logits, classes = gradcam.heatmaps(real_bscan, [0, 1, 2])
    expected_shape = tuple(side // FEATURE_STRIDE for side in gradcam.spec.input_size)
    assert maps.shape == (3, *expected_shape)
    assert maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert all(m.max() == pytest.approx(1.0) for m in maps), "each map is normalised to reach 1"
    assert logits.shape == (3,) and classes == [0, 1, 2]


def test_maps_for_two_classes_differ(gradcam: GradCam, real_bscan: Image.Image) -> None:
    maps, _, _ = gradcam.heatmaps(real_bscan, [0, 2])
    assert np.abs(maps[0] - maps[1]).max() > 0.1


def test_matches_hook_based_reference(gradcam: GradCam, real_bscan: Image.Image) -> None:
    batch = torch.from_numpy(preprocess_array(real_bscan, gradcam.spec)[None])
    for class_index in range(3):
        maps, _, _ = gradcam.heatmaps(real_bscan, [class_index])
        np.testing.assert_allclose(maps[0], _reference_gradcam(gradcam.model, batch, class_index), atol=1e-4)


def test_default_class_is_the_predicted_one(gradcam: GradCam, real_bscan: Image.Image) -> None:
    _, logits, classes = gradcam.heatmaps(real_bscan)
    assert classes == [int(np.argmax(logits))]
    explanation = gradcam.explain(real_bscan)
    assert explanation.class_index == classes[0]
    assert explanation.class_name == gradcam.class_names[classes[0]]


def test_target_layer_per_family(explain_bundles) -> None:
    assert target_layer_name(explain_bundles["test_efficientnet"].model()) == "conv_head"
    assert target_layer_name(explain_bundles["test_convnext"].model()) == "stages.3"
    with pytest.raises(ValueError, match="EfficientNet and ConvNeXt"):
        target_layer_name(torch.nn.Linear(2, 2))


def test_explanation_json_holds_map_and_png_overlay(gradcam: GradCam, real_bscan: Image.Image) -> None:
    answer = gradcam.explain(real_bscan, class_index=1).to_dict()
    assert answer["method"] == "grad-cam" and answer["class_name"] == "drusen"
    assert np.asarray(answer["map"]).shape == tuple(answer["map_shape"])
    png = base64.b64decode(answer["overlay_png_base64"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as overlay:
        assert overlay.mode == "RGB"
        assert overlay.size == real_bscan.size  # 512 x 496 already fits OVERLAY_MAX_SIDE


def test_unknown_class_is_refused(gradcam: GradCam, real_bscan: Image.Image) -> None:
    with pytest.raises(ValueError, match="out of range"):
        gradcam.heatmaps(real_bscan, [3])
    with pytest.raises(ValueError, match="'dme' is not one of normal, drusen, cnv"):
        gradcam.class_index("dme")


def test_concurrent_explanations_equal_sequential_ones(gradcam: GradCam, sample_jpegs) -> None:
    images = []
    for path in sample_jpegs["DRUSEN"][:4]:
        with Image.open(path) as image:
            image.load()
            images.append(image)
    sequential = [gradcam.heatmaps(image, [2])[0] for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda image: gradcam.heatmaps(image, [2])[0], images * 2))
    for index, maps in enumerate(concurrent):
        np.testing.assert_allclose(maps, sequential[index % len(images)], atol=1e-6)


def test_sixteen_bit_scan_is_explained(gradcam: GradCam, real_bscan: Image.Image) -> None:
    deep = Image.fromarray(np.asarray(real_bscan, dtype=np.uint16) * 257)
    assert deep.mode == "I;16"
    maps_deep, _, _ = gradcam.heatmaps(deep, [0])
    maps_8bit, _, _ = gradcam.heatmaps(real_bscan, [0])
    # Same scan at another bit depth; resizing in float vs 8 bits rounds differently, hence the tolerance.
    np.testing.assert_allclose(maps_deep, maps_8bit, atol=0.05)
    assert gradcam.explain(deep).overlay_png


def test_overlay_keeps_the_scan_where_the_map_is_zero() -> None:
    scan = Image.fromarray(np.tile(np.arange(0, 256, 2, dtype=np.uint8), (64, 1)))  # 128 wide, 64 high
    heatmap = np.zeros((2, 4), dtype=np.float32)
    heatmap[:, -1] = 1.0
    overlay = np.asarray(overlay_heatmap(scan, heatmap))
    assert overlay.shape == (64, 128, 3)
    left = overlay[:, :32]
    assert (left[..., 0] == left[..., 1]).all() and (left[..., 1] == left[..., 2]).all(), (
        "no tint where map is 0"
    )
    np.testing.assert_array_equal(left[..., 0], np.asarray(scan)[:, :32])
    right = overlay[:, -4:].astype(int)
    assert (right[..., 0] - right[..., 2]).mean() > 30, "the hottest part is tinted red"


def test_overlay_of_a_large_scan_is_downscaled() -> None:
    scan = Image.new("L", (2048, 1024), color=128)
    overlay = overlay_heatmap(scan, np.ones((4, 8), dtype=np.float32))
    assert overlay.size == (OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE // 2)


def test_colorize_runs_from_dark_blue_to_red() -> None:
    colors = colorize(np.array([[-1.0, 0.0, 0.25, 0.5, 1.0, 2.0]])).astype(int)[0]
    assert colors.shape == (6, 3)
    np.testing.assert_array_equal(colors[0], colors[1])  # clipped below 0
    np.testing.assert_array_equal(colors[4], colors[5])  # clipped above 1
    assert colors[1].sum() < 120, "0 is dark"
    assert colors[2][2] > colors[2][0], "low values are blue"
    assert colors[3][1] > 200, "the middle is green"
    assert colors[4][0] > 2 * colors[4][2], "1 is red"


def test_explainer_runs_off_the_event_loop_and_bounds_its_backlog(explain_bundles, real_bscan) -> None:
    bundle = explain_bundles["test_efficientnet"]
    explainer = Explainer(max_pending=2)

    async def three_at_once():
        calls = [explainer.explain(bundle, real_bscan, "cnv") for _ in range(3)]
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        outcomes = asyncio.run(three_at_once())
        assert explainer.gradcam(bundle) is explainer.gradcam(bundle), "one GradCam per bundle"
        again = asyncio.run(explainer.explain(bundle, real_bscan, "normal"))  # the backlog drained
    finally:
        explainer.close()
    explained = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    assert len(explained) == 2 and all(item.class_name == "cnv" for item in explained)
    assert len(refused) == 1 and isinstance(refused[0], ExplainerBusy)
    assert again.class_name == "normal" and again.compute_ms > 0
