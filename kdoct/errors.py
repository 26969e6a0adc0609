"""The exception tree shared by training and serving.

    KdoctError
    ├── LabelError        an unknown class name or class set (also a ValueError)
    ├── PreprocessError   an image the eval transform cannot turn into a tensor (also a ValueError)
    ├── ModelInitError    an unknown architecture, or initial weights that cannot be had
    ├── BundleError       a model bundle that is missing, corrupt, or does not match its bundle.json
    │   └── GoldenMismatchError  a runtime that does not reproduce the bundle's golden outputs
    ├── DataError         unreadable or unlabeled data files, a malformed manifest
    │   └── LeakageError  a split in which one patient appears on two sides
    └── ConfigError       settings that are invalid or cannot take effect together

Every message names the file or value at fault and, where there is one, the fix.
"""

__all__ = [
    "BundleError",
    "ConfigError",
    "DataError",
    "GoldenMismatchError",
    "KdoctError",
    "LabelError",
    "LeakageError",
    "ModelInitError",
    "PreprocessError",
]


class KdoctError(Exception):
    """Base of every error kdoct raises on purpose."""


class LabelError(KdoctError, ValueError):
    pass


class PreprocessError(KdoctError, ValueError):
    pass


class ModelInitError(KdoctError):
    pass


class BundleError(KdoctError):
    pass


class GoldenMismatchError(BundleError):
    pass


class DataError(KdoctError):
    pass


class LeakageError(DataError):
    pass


class ConfigError(KdoctError, ValueError):
    pass
