"""Training throughput (images/s) of a config's teacher and student, with and without mixed precision
and channels_last, on synthetic B-scans through the real data loader and training step."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdoct.labels import class_names as class_set_names
from model_training.config import ExperimentConfig, StageConfig
from model_training.data.dataset import OCTDataset
from model_training.data.manifest import read_manifest
from model_training.data.synthetic import generate_dataset
from model_training.train.augment import TrainAugment, normalise
from model_training.train.distributed import init_distributed
from model_training.train.engine import make_precision, train_one_epoch
from model_training.train.losses import distillation_loss, focal_loss
from model_training.train.stage_model import build_model, head_backbone_groups, stage_spec

__all__ = ["training_throughput"]


def _measure(
    stage: StageConfig, samples, class_names, device, teacher_stage: StageConfig | None, batches: int
):
    spec = stage_spec(stage)
    model = build_model(stage.model_copy(update={"init": None}), len(class_names)).to(device)
    if stage.channels_last:
        model = model.to(memory_format=torch.channels_last)
    teacher = teacher_spec = None
    if teacher_stage is not None:
        teacher_spec = stage_spec(teacher_stage)
        teacher = (
            build_model(teacher_stage.model_copy(update={"init": None}), len(class_names)).to(device).eval()
        )
        if stage.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
    precision = make_precision(device, stage.amp)
    optimizer = torch.optim.AdamW(
        [{"params": g["params"], "lr": g["lr"]} for g in head_backbone_groups(model, stage)],
        weight_decay=0.01,
    )

    def loss_fn(m, images, targets):
        logits = m(normalise(images, spec))
        if teacher is None:
            return focal_loss(logits, targets), logits
        with torch.no_grad():
            teacher_logits = teacher(normalise(images, teacher_spec))
        return distillation_loss(logits, teacher_logits, targets), logits

    # Batches are augmented once up front: the figure is the training step's own throughput (what AMP
    # and channels_last change), not the data loader's, which scales with num_workers.
    dataset = OCTDataset(samples, class_names, augment=TrainAugment(stage.augment, spec))
    order = itertools.cycle(range(len(dataset)))
    batches_list = []
    for _ in range(batches + 3):
        items = [dataset[next(order)] for _ in range(stage.batch_size)]
        images = torch.stack([image for image, _ in items])
        targets = torch.tensor([target for _, target in items])
        batches_list.append((images, targets))
    common = dict(
        device=device, precision=precision, accum_steps=stage.accum_steps, channels_last=stage.channels_last,
        progress=False,
    )  # fmt: skip
    train_one_epoch(model, batches_list[:3], optimizer, loss_fn, **common)  # cuDNN autotuning, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
    stats = train_one_epoch(model, batches_list[3:], optimizer, loss_fn, **common)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"images_per_s": stats["images_per_s"], "precision": precision.name, "images": stats["images"]}


def training_throughput(config: ExperimentConfig, batches: int = 20) -> dict[str, Any]:
    """images/s of the teacher (focal loss) and of the student (distillation, teacher forward
    included) for amp x channels_last on/off, at the config's sizes and batch sizes."""
    context = init_distributed(config.device)
    class_names = class_set_names(config.data.classes)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        manifest = generate_dataset(Path(scratch) / "data", 12, 4, classes=config.data.classes, seed=0)
        samples = read_manifest(manifest, classes=config.data.classes)
        for role in ("teacher", "student"):
            for amp, channels_last in ((False, False), (True, False), (False, True), (True, True)):
                stage = getattr(config, role).model_copy(update={"amp": amp, "channels_last": channels_last})
                teacher_stage = None
                if role == "student":
                    teacher_stage = config.teacher.model_copy(
                        update={"amp": amp, "channels_last": channels_last}
                    )
                result = _measure(stage, samples, class_names, context.device, teacher_stage, batches)
                rows.append(
                    {
                        "role": role,
                        "arch": stage.arch,
                        "input_size": stage.input_size,
                        "batch_size": stage.batch_size,
                        "accum_steps": stage.accum_steps,
                        "amp": amp,
                        "channels_last": channels_last,
                        **result,
                    }
                )
    device_name = torch.cuda.get_device_name(0) if context.device.type == "cuda" else "cpu"
    return {"config": config.source_path, "device": device_name, "batches": batches, "rows": rows}


def throughput_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Training throughput, `{report['config']}` settings, synthetic B-scans, {report['device']}, "
        f"{report['batches']} pre-augmented batches per measurement after 3 warm-up batches; the student's "
        f"figure includes the frozen teacher's forward pass.",
        "",
        "| model | arch | input | batch x accum | AMP | channels_last | precision | images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        cells = [
            row["role"], row["arch"], str(row["input_size"]), f"{row['batch_size']} x {row['accum_steps']}",
            "on" if row["amp"] else "off", "on" if row["channels_last"] else "off", row["precision"],
            f"{row['images_per_s']:.1f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
