"""OCT data layer: manifests, dataset readers, patient-level folds and the synthetic OCT generator.

Import from the modules (manifest, readers, folds, synthetic, image_check); nothing is re-exported
here, so `import model_training.data.manifest` stays light.
"""
