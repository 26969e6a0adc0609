"""From a trained model to a verified bundle: the ONNX bundle export (bundle_export), the safety gate
the bundle carries (safety_fit), and the INT8 model added to a bundle (int8, int8_data).

Uses only kdoct and data/; train/ exports through it. Import from the modules."""
