"""Training a stage: the model (stage_model), augmentations, losses, the training step (engine) and the
epoch loop (fit), checkpoints, torchrun (distributed), the end of a stage (finish: calibrate, fit the
safety gate, export), the teacher and the distilled student; and training throughput.

Above data/, evaluation/ and export/, which it uses; below runs/. Import from the modules."""
