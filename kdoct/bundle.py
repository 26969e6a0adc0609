"""Model bundles: a directory with bundle.json, model.safetensors, model.onnx and golden/ (and, for an
INT8 student, model.int8.onnx with its own golden expectations).

bundle.json lists the sha256 of every other file in the directory. `load_bundle` verifies all of
them and the schema version before anything is trusted; any mismatch is a `BundleError` that names
the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kdoct.errors import BundleError
from kdoct.hashing import sha256_file
from kdoct.preprocess import PreprocessSpec

__all__ = [
    "INT8_ONNX_NAME",
    "MANIFEST_NAME",
    "ONNX_NAME",
    "SCHEMA_VERSION",
    "WEIGHTS_NAME",
    "Bundle",
    "add_to_bundle",
    "load_bundle",
    "save_bundle",
    "sha256_file",
]

SCHEMA_VERSION = 1
MANIFEST_NAME = "bundle.json"
WEIGHTS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"
INT8_ONNX_NAME = "model.int8.onnx"  # the statically quantized model.onnx (model_training/export/int8.py)
ROLES = ("student", "teacher")
REQUIRED_FIELDS = {
    "name": str,
    "version": str,
    "role": str,
    "arch": str,
    "class_names": list,
    "preprocess": dict,
}


@dataclass
class Bundle:
    """A verified bundle. `sha256` is the hash of bundle.json, which pins every file in it."""

    path: Path
    manifest: dict[str, Any]
    sha256: str
    _model: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def role(self) -> str:
        return self.manifest["role"]

    @property
    def arch(self) -> str:
        return self.manifest["arch"]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["class_names"])

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def temperature(self) -> float:
        return float(self.manifest.get("calibration", {}).get("temperature", 1.0))

    @property
    def int8_temperature(self) -> float:
        """The INT8 model's own temperature (fitted on its logits at export); bundles exported before
        it existed use the fp32 one."""
        return float(self.manifest.get("int8", {}).get("temperature", self.temperature))

    @property
    def onnx_path(self) -> Path | None:
        path = self.path / ONNX_NAME
        return path if ONNX_NAME in self.manifest["files"] else None

    @property
    def int8_onnx_path(self) -> Path | None:
        path = self.path / INT8_ONNX_NAME
        return path if INT8_ONNX_NAME in self.manifest["files"] else None

    @property
    def golden_dir(self) -> Path | None:
        has_golden = any(name.startswith("golden/") for name in self.manifest["files"])
        return self.path / "golden" if has_golden else None

    def model(self):
        """The PyTorch model in eval mode on CPU, built once from model.safetensors."""
        if self._model is None:
            self._model = _build_model(self)
        return self._model


def _build_model(bundle: Bundle):
    # deferred: torch (and timm) only for the PyTorch model; loading and verifying a bundle stays
    # torch-free, which the ONNX Runtime service relies on
    from safetensors.torch import load_file

    from kdoct.models import create_model

    model = create_model(bundle.arch, len(bundle.class_names))
    weights = bundle.path / WEIGHTS_NAME
    try:
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001
        raise BundleError(f"{weights}: weights do not load into {bundle.arch}: {exc}") from exc
    return model.eval()


def _validate_manifest(manifest: Mapping[str, Any], where: Path) -> None:
    for key, kind in REQUIRED_FIELDS.items():
        if not isinstance(manifest.get(key), kind):
            raise BundleError(f"{where}: field {key!r} is missing or not a {kind.__name__}")
    if manifest["role"] not in ROLES:
        raise BundleError(f"{where}: role must be one of {ROLES}, got {manifest['role']!r}")
    names = manifest["class_names"]
    if len(names) < 2 or len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        raise BundleError(f"{where}: class_names must be at least 2 distinct strings, got {names}")
    try:
        PreprocessSpec.from_dict(manifest["preprocess"])
    except Exception as exc:  # noqa: BLE001
        raise BundleError(f"{where}: invalid preprocess spec: {exc}") from exc


def _list_files(directory: Path) -> list[str]:
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME
    )


def save_bundle(
    directory: str | Path,
    model,
    manifest: Mapping[str, Any],
    extra_files: Mapping[str, bytes] | None = None,
) -> Bundle:
    """Write the model's weights, any extra files, and a bundle.json that pins them all.

    Files already in `directory` (e.g. model.onnx written by the exporter) are pinned as well.
    """
    from safetensors.torch import save_file  # deferred: torch, as in _build_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = dict(manifest)
    manifest["schema_version"] = SCHEMA_VERSION
    manifest.setdefault("created_at", datetime.now(UTC).isoformat(timespec="seconds"))
    if isinstance(manifest.get("preprocess"), PreprocessSpec):
        manifest["preprocess"] = manifest["preprocess"].to_dict()
    _validate_manifest({**manifest, "files": {}}, directory / MANIFEST_NAME)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME))
    for relative, content in (extra_files or {}).items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    manifest["files"] = {name: sha256_file(directory / name) for name in _list_files(directory)}
    text = json.dumps(manifest, indent=2, sort_keys=True)
    (directory / MANIFEST_NAME).write_text(text + "\n")
    return load_bundle(directory)


def add_to_bundle(
    directory: str | Path, files: Mapping[str, bytes], manifest_updates: Mapping[str, Any]
) -> Bundle:
    """Add new files to a verified bundle and re-pin bundle.json with `manifest_updates` merged in.

    The bundle is verified first, so a corrupt bundle is never re-pinned; a file it already lists is
    never replaced (a pinned file changes only by re-exporting). bundle.json is replaced atomically
    last; on any failure the new files are removed and the bundle is as it was.
    """
    bundle = load_bundle(directory)
    directory = bundle.path
    clashes = sorted(name for name in files if name in bundle.manifest["files"] or name == MANIFEST_NAME)
    if clashes:
        raise BundleError(f"{directory}: {clashes[0]} is already in the bundle: re-export it instead")
    manifest = {**bundle.manifest, **dict(manifest_updates)}
    written: list[Path] = []
    try:
        for relative, content in files.items():
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            written.append(target)
        manifest["files"] = {
            **bundle.manifest["files"],
            **{name: sha256_file(directory / name) for name in files},
        }
        _validate_manifest(manifest, directory / MANIFEST_NAME)
        staged = directory / (MANIFEST_NAME + ".tmp")
        staged.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        staged.replace(directory / MANIFEST_NAME)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        (directory / (MANIFEST_NAME + ".tmp")).unlink(missing_ok=True)
        raise
    return load_bundle(directory)


def load_bundle(directory: str | Path) -> Bundle:
    """Read and verify a bundle: schema version, required fields, the sha256 of every file."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise BundleError(f"bundle directory {directory} does not exist")
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path} is missing: {directory} is not a kdoct bundle")
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} must hold a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path}: schema_version {version!r} is not supported (this kdoct reads "
            f"{SCHEMA_VERSION}): re-export the bundle with this version of model_training"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS_NAME not in files:
        raise BundleError(f"{manifest_path}: 'files' must list {WEIGHTS_NAME} and its sha256")
    _validate_manifest(manifest, manifest_path)
    for name, expected in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            raise BundleError(
                f"{path} is listed in {MANIFEST_NAME} but missing: restore or re-export the bundle"
            )
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"{path}: sha256 mismatch (bundle.json says {expected[:12]}…, file is {actual[:12]}…): "
                f"the file is corrupt or was replaced; re-export the bundle"
            )
    unlisted = [name for name in _list_files(directory) if name not in files]
    if unlisted:
        raise BundleError(
            f"{directory / unlisted[0]} is not listed in {MANIFEST_NAME}: "
            f"a bundle holds only the files it pins"
        )
    return Bundle(path=directory, manifest=manifest, sha256=hashlib.sha256(raw).hexdigest())
