"""Whole runs over a run directory (model_training/layout.py): its data made once (run_data),
cross-validation of the recipe (cv) and the deployable final models (final).

The top of the training stack: uses train/, evaluation/ and data/. Import from the modules."""
