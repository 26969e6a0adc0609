"""Training throughput of the paper's settings (neh_paper.yaml) on a GPU, with and without AMP and
channels_last: the teacher step (focal loss, balanced weights, AdamW with head/backbone groups) and
the online-distillation student step (frozen teacher forward on the same batch).

Images are synthetic OCT B-scans (model_training.data.synthetic), resized once and held on the host
as un-normalised [0, 1] tensors, so the figure is the model step, not the CPU augmentation.

    PYTHONPATH=. python -m bench.gpu_training --out results.json [--steps 12] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from kdoct.models import create_model
from model_training.augment import normalise
from model_training.config import load_config
from model_training.data.synthetic import synth_bscan
from model_training.engine import make_precision, train_one_epoch
from model_training.experiment import stage_spec
from model_training.losses import distillation_loss, focal_loss
from model_training.teacher import head_backbone_groups

CONFIG = Path(__file__).resolve().parents[1] / "model_training/configs/neh_paper.yaml"


def synthetic_batches(
    count: int, batch_size: int, size: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    labels = ("normal", "drusen", "cnv")
    pool = []
    for index in range(min(count * batch_size, 32)):
        image = synth_bscan(labels[index % 3], rng).convert("L").resize((size, size))
        pool.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0))
    batches = []
    for step in range(count):
        ids = [(step * batch_size + i) % len(pool) for i in range(batch_size)]
        images = torch.stack([pool[i] for i in ids]).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        targets = torch.tensor([i % 3 for i in ids])
        batches.append((images.pin_memory() if torch.cuda.is_available() else images, targets))
    return batches


def measure(model, stage, loss_fn, batches, device, amp, channels_last, warmup=3):
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(head_backbone_groups(model, stage), weight_decay=stage.weight_decay)
    precision = make_precision(device, amp)
    common = dict(device=device, precision=precision, accum_steps=stage.accum_steps, channels_last=channels_last,
                  progress=False)  # fmt: skip
    train_one_epoch(model, batches[:warmup], optimizer, loss_fn, **common)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = train_one_epoch(model, batches[warmup:], optimizer, loss_fn, **common)
    if device.type == "cuda":
        torch.cuda.synchronize()
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["precision"] = precision.name
    result["channels_last"] = channels_last
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=12, help="timed batches per variant")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--teacher-arch", default=None, help="override (CPU dry runs use a tiny model)")
    parser.add_argument("--student-arch", default=None)
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--big-batch", type=int, default=32, help="extra AMP+channels_last run at this batch")
    args = parser.parse_args()
    overrides = []
    if args.teacher_arch:
        overrides.append(f"teacher.arch={args.teacher_arch}")
    if args.student_arch:
        overrides.append(f"student.arch={args.student_arch}")
    if args.input_size:
        overrides += [f"teacher.input_size={args.input_size}", f"student.input_size={args.input_size}"]
    overrides += ["teacher.init=null", "student.init=null"]  # random weights: speed only
    config = load_config(CONFIG, overrides)
    device = torch.device(args.device)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "config": str(CONFIG.name), "runs": []}  # fmt: skip
    weight = torch.tensor([1.2, 0.9, 1.0], device=device)
    teacher_stage, student_stage = config.teacher, config.student
    teacher_spec, student_spec = stage_spec(teacher_stage), stage_spec(student_stage)

    def teacher_loss(model, images, targets):
        logits = model(normalise(images, teacher_spec))
        return focal_loss(logits, targets, gamma=teacher_stage.focal_gamma, weight=weight), logits

    frozen_teacher = None

    def student_loss(model, images, targets):
        logits = model(normalise(images, student_spec))
        with torch.no_grad():
            teacher_logits = frozen_teacher(normalise(images, teacher_spec))
        return distillation_loss(
            logits, teacher_logits, targets, student_stage.alpha, student_stage.temperature
        ), logits

    variants = [(False, False), (False, True), (True, False), (True, True)]
    for role, stage, loss_fn in (
        ("teacher", teacher_stage, teacher_loss),
        ("student", student_stage, student_loss),
    ):
        size = stage.input_size
        for batch_size, variant_list in ((stage.batch_size, variants), (args.big_batch, [(True, True)])):
            batches = synthetic_batches(args.steps + 3, batch_size, size)
            for amp, channels_last in variant_list:
                torch.manual_seed(0)
                if role == "student":
                    frozen_teacher = create_model(teacher_stage.arch, 3).to(device).eval()
                    if channels_last:
                        frozen_teacher.to(memory_format=torch.channels_last)
                    frozen_teacher.requires_grad_(False)
                model = create_model(
                    stage.arch, 3, drop_rate=stage.drop_rate, drop_path_rate=stage.drop_path_rate
                )
                started = time.perf_counter()
                result = measure(model, stage, loss_fn, batches, device, amp, channels_last)
                result.update(role=role, arch=stage.arch, input_size=size, batch_size=batch_size,
                              accum_steps=stage.accum_steps, wall_s=time.perf_counter() - started)  # fmt: skip
                print(json.dumps(result), flush=True)
                results["runs"].append(result)
                del model
                frozen_teacher = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
