"""Figures: predictions of a model or bundle (predict), metrics and calibration from saved predictions
(classification_metrics, calibration, statistics), the cross-validation report and its publication
(cv_report, publish), `evaluate`, the safety gate's report (gate_report) and what a bundle costs to
run (bundle_efficiency).

Uses only kdoct and data/; training validates and calibrates with it. Import from the modules."""
