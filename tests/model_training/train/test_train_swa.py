"""SWA must change the evaluated weights: the final model is the average of the SWA epochs' weights
(with BatchNorm statistics recomputed), not the best checkpoint. The reference code lost this."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdoct.labels import class_names
from kdoct.models import create_model
from model_training.config import AugmentConfig, StageConfig, SwaConfig
from model_training.data.manifest import Sample
from model_training.data.synthetic import synth_bscan
from model_training.train.augment import normalise
from model_training.train.distributed import init_distributed
from model_training.train.fit import StageRun, fit
from model_training.train.losses import focal_loss
from model_training.train.stage_model import head_backbone_groups, stage_spec

CLASSES = class_names("neh3")


@pytest.fixture(scope="module")
def tiny_samples(tmp_path_factory) -> list[Sample]:
    folder = tmp_path_factory.mktemp("swa-data")
    rng = np.random.default_rng(0)
    samples = []
    for index in range(18):
        label = CLASSES[index % 3]
        path = folder / f"{label}-{index}.png"
        synth_bscan(label, rng, size=(96, 92)).save(path)
        samples.append(Sample(str(path), label, f"p{index}"))
    return samples


def test_evaluated_weights_are_the_swa_average(tiny_samples, tmp_path):
    torch.set_num_threads(1)
    stage = StageConfig(
        arch="test_efficientnet", input_size=32, epochs=4, batch_size=4, lr_head=5e-3, lr_backbone=5e-3,
        monitor="val_loss", patience=10, swa=SwaConfig(enabled=True, start_epoch=2, lr=5e-3),
        channels_last=False, augment=AugmentConfig(erasing_p=0.0),
    )  # fmt: skip
    spec = stage_spec(stage)
    torch.manual_seed(0)
    model = create_model(stage.arch, 3)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def watch(epoch, current, in_swa):
        snapshots[epoch] = {n: p.detach().clone() for n, p in current.named_parameters()}

    def loss_fn(m, images, targets):
        logits = m(normalise(images, spec))
        return focal_loss(logits, targets), logits

    run = StageRun(
        role="teacher", fold=0, stage=stage, model=model, spec=spec, class_names=CLASSES,
        train_samples=tiny_samples[:12], val_samples=tiny_samples[12:], loss_fn=loss_fn,
        param_groups=head_backbone_groups(model, stage), out_dir=tmp_path, context=init_distributed("cpu"),
        on_epoch_end=watch, progress=False,
    )  # fmt: skip
    result = fit(run)
    assert result.selected == "swa" and result.swa_epochs == 2
    final = dict(result.model.named_parameters())
    for name, value in final.items():
        expected = (snapshots[2][name] + snapshots[3][name]) / 2
        assert torch.allclose(value, expected, atol=1e-6), name
    # ... which is neither the best checkpoint nor the last epoch's weights.
    resume = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    best = resume["best_state"]
    assert any(not torch.allclose(final[n], best[n]) for n in final)
    assert any(not torch.allclose(final[n], snapshots[3][n]) for n in final)
    # BatchNorm statistics were recomputed for the averaged weights, not copied from the last epoch.
    buffers = dict(result.model.named_buffers())
    running = [n for n in buffers if n.endswith("running_mean")]
    assert running and any(not torch.allclose(buffers[n], resume["model"][n]) for n in running)


def test_resume_continues_where_training_stopped(tiny_samples, tmp_path):
    torch.set_num_threads(1)
    base = dict(
        arch="test_efficientnet", input_size=32, batch_size=4, lr_head=5e-3, lr_backbone=5e-3,
        monitor="val_accuracy", patience=10, channels_last=False,
    )  # fmt: skip

    def make_run(epochs: int) -> StageRun:
        stage = StageConfig(epochs=epochs, **base)
        spec = stage_spec(stage)
        torch.manual_seed(0)
        model = create_model(stage.arch, 3)

        def loss_fn(m, images, targets):
            logits = m(normalise(images, spec))
            return torch.nn.functional.cross_entropy(logits, targets), logits

        return StageRun(
            role="student", fold=2, stage=stage, model=model, spec=spec, class_names=CLASSES,
            train_samples=tiny_samples[:12], val_samples=tiny_samples[12:], loss_fn=loss_fn,
            param_groups=head_backbone_groups(model, stage), out_dir=tmp_path,
            context=init_distributed("cpu"), progress=False,
        )  # fmt: skip

    fit(make_run(1))
    resumed = fit(make_run(3), resume=True)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3  # epoch 0 was not trained twice
    assert [json.loads(line)["fold"] for line in lines] == [2, 2, 2]  # pooled logs say which fold


def test_validation_accuracy_ties_go_to_the_lower_validation_loss():
    from model_training.train.fit import _improved

    stage = StageConfig(arch="test_efficientnet", monitor="val_accuracy")
    assert _improved(stage, 0.988, 0.976, val_loss=0.3, best_val_loss=0.1)  # higher accuracy wins
    assert _improved(stage, 0.988, 0.988, val_loss=0.18, best_val_loss=0.23)  # tie: lower loss wins
    assert not _improved(stage, 0.988, 0.988, val_loss=0.25, best_val_loss=0.23)
    assert not _improved(stage, 0.976, 0.988, val_loss=0.01, best_val_loss=0.23)
    by_loss = StageConfig(arch="test_efficientnet", monitor="val_loss")
    assert _improved(by_loss, 0.2, 0.3, val_loss=0.2, best_val_loss=0.3)


def test_an_interrupted_and_resumed_run_trains_the_same_weights(tiny_samples, tmp_path):
    """Interrupted inside the SWA window (optimiser, schedules, SWA average, RNG all restored from
    last.pt), the resumed run ends bit for bit where an uninterrupted one does."""
    torch.set_num_threads(1)

    class Interrupted(Exception):
        pass

    def make_run(out_dir, interrupt_at=None) -> StageRun:
        stage = StageConfig(
            arch="test_efficientnet", input_size=32, epochs=4, batch_size=4, lr_head=5e-3, lr_backbone=5e-3,
            warmup_epochs=1, monitor="val_accuracy", patience=10, channels_last=False,
            swa=SwaConfig(enabled=True, start_epoch=2, lr=5e-3), augment=AugmentConfig(erasing_p=0.1),
        )  # fmt: skip
        spec = stage_spec(stage)
        torch.manual_seed(0)
        model = create_model(stage.arch, 3)

        def loss_fn(m, images, targets):
            logits = m(normalise(images, spec))
            return focal_loss(logits, targets), logits

        def interrupt(epoch, current, in_swa):
            if epoch == interrupt_at:
                raise Interrupted  # after epoch interrupt_at - 1 was saved, before this one is

        return StageRun(
            role="teacher", fold=0, stage=stage, model=model, spec=spec, class_names=CLASSES,
            train_samples=tiny_samples[:12], val_samples=tiny_samples[12:], loss_fn=loss_fn,
            param_groups=head_backbone_groups(model, stage), out_dir=out_dir,
            context=init_distributed("cpu"), on_epoch_end=interrupt, progress=False,
        )  # fmt: skip

    straight = fit(make_run(tmp_path / "straight"))
    with pytest.raises(Interrupted):
        fit(make_run(tmp_path / "resumed", interrupt_at=3))
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["swa_model"] is not None
    resumed = fit(make_run(tmp_path / "resumed"), resume=True)
    assert resumed.selected == straight.selected == "swa" and resumed.swa_epochs == 2
    figures = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr", "swa")
    assert [{k: h[k] for k in figures} for h in resumed.history] == [
        {k: h[k] for k in figures} for h in straight.history
    ]
    expected = straight.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
