"""Synthetic retinal OCT B-scans for tests and the demo, modelled on the OCT2017 sample.

A B-scan is drawn as a curved stack of retinal layers between the inner limiting membrane (ILM) and
the retinal pigment epithelium (RPE), with a foveal pit, a textured choroid below, speckle noise,
A-scan brightness stripes and retinal-vessel shadows. Per patient: tilt, curvature, depth,
thickness, brightness, noise and, sometimes, the white corner wedge that registration leaves in
real scans (drawn independently of the class, so it is no shortcut). Per class:
- normal: smooth layers, flat RPE;
- drusen: dome-shaped RPE elevations over moderately reflective material, Bruch's membrane flat;
- cnv: a hyper-reflective subretinal lesion lifting the RPE, dark subretinal fluid above it, a few
  intraretinal fluid pockets, a thickened retina and a shadow below;
- dme: a thickened retina with many dark intraretinal cysts, RPE intact.

All randomness comes from the numpy Generator passed in, so the same seed gives byte-identical PNGs
(Pillow writes no timestamp). Sizes are (width, height) as in PIL; everything scales with them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from kdoct.errors import DataError
from kdoct.labels import class_names, parse_label
from model_training.data.manifest import Sample, write_manifest

__all__ = ["PatientParams", "generate_dataset", "render_bscan", "synth_bscan", "synth_bscan16"]

_ALL_LABELS = ("normal", "drusen", "cnv", "dme")

# Reflectivity across the neurosensory retina, ILM (0) to the top of the RPE (1). The inner layers
# occupy [0, 0.5] and the outer ones [0.5, 1]; at the fovea the inner half is squeezed away.
_LAYER_DEPTH = np.array(
    [0.00, 0.02, 0.09, 0.13, 0.22, 0.26, 0.34, 0.38, 0.44, 0.48, 0.52, 0.56,
     0.84, 0.87, 0.89, 0.92, 0.94, 0.96, 1.00], dtype=np.float32,
)  # fmt: skip
_LAYER_LEVEL = np.array(
    [0.95, 0.85, 0.65, 0.42, 0.42, 0.58, 0.55, 0.24, 0.24, 0.52, 0.50, 0.14,
     0.14, 0.42, 0.22, 0.85, 0.85, 0.38, 0.45], dtype=np.float32,
)  # fmt: skip


@dataclass(frozen=True)
class PatientParams:
    """What stays the same across one patient's B-scans. Lengths are fractions of the image size."""

    tilt: float  # rows per column of the whole retina
    curvature: float  # > 0: bowl, the centre lower than the edges (fraction of height at the edge)
    depth: float  # RPE depth at the centre, fraction of height
    thickness: float  # retinal thickness away from the fovea, fraction of height
    fovea_x: float  # fraction of width
    pit_depth: float  # fraction of the thickness the foveal pit removes
    brightness: float
    speckle: float  # log-normal speckle sigma
    background: float  # mean level of the noise floor
    wedge: int  # 0 none, 1 top-left, 2 top-right: white corner from registration

    @classmethod
    def sample(cls, rng: np.random.Generator) -> PatientParams:
        return cls(
            tilt=float(rng.uniform(-0.12, 0.12)),
            curvature=float(rng.uniform(-0.03, 0.14)),
            depth=float(rng.uniform(0.36, 0.52)),
            thickness=float(rng.uniform(0.18, 0.24)),
            fovea_x=float(rng.uniform(0.4, 0.6)),
            pit_depth=float(rng.uniform(0.45, 0.65)),
            brightness=float(rng.uniform(0.8, 1.1)),
            speckle=float(rng.uniform(0.3, 0.45)),
            background=float(rng.uniform(0.06, 0.14)),
            wedge=int(rng.choice(3, p=[0.7, 0.15, 0.15])),
        )


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    coarse = rng.uniform(-1.0, 1.0, size=cells).astype(np.float32)
    image = Image.fromarray(coarse).resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32)


def _bumps(x: np.ndarray, centres, widths, heights, power: float = 1.0) -> np.ndarray:
    """Sum of Gaussian bumps along x; power < 1 flattens their tops into domes."""
    total = np.zeros_like(x)
    for centre, width, height in zip(centres, widths, heights, strict=True):
        total += height * np.exp(-(((x - centre) / width) ** 2)) ** power
    return total


def _ellipses(shape, centres, radii) -> np.ndarray:
    """Boolean mask of filled ellipses, computed in each ellipse's bounding box only."""
    mask = np.zeros(shape, dtype=bool)
    rows, cols = shape
    for (cy, cx), (ry, rx) in zip(centres, radii, strict=True):
        top, bottom = max(int(cy - ry), 0), min(int(cy + ry) + 2, rows)
        left, right = max(int(cx - rx), 0), min(int(cx + rx) + 2, cols)
        if top >= bottom or left >= right:
            continue
        yy = np.arange(top, bottom, dtype=np.float32)[:, None]
        xx = np.arange(left, right, dtype=np.float32)[None, :]
        mask[top:bottom, left:right] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return mask


def render_bscan(
    label: str,
    rng: np.random.Generator,
    params: PatientParams | None = None,
    size: tuple[int, int] = (512, 496),
) -> np.ndarray:
    """One B-scan of `label` as float32 (height, width) in [0, 1]."""
    label = parse_label(label, _ALL_LABELS)
    params = params or PatientParams.sample(rng)
    width, height = int(size[0]), int(size[1])
    if width < 32 or height < 32:
        raise DataError(f"synthetic B-scan size must be at least 32x32, got {width}x{height}")
    x = np.arange(width, dtype=np.float32)
    y = np.arange(height, dtype=np.float32)[:, None]
    xn = x / width - 0.5

    # Geometry: the RPE line and the retinal thickness along x. A B-scan off the fovea has a shallower pit.
    scan_offset = rng.uniform(-1.2, 1.2)
    pit = params.pit_depth * np.exp(-(scan_offset**2))
    fovea = (params.fovea_x + rng.uniform(-0.03, 0.03)) * width
    pit_profile = np.exp(-(((x - fovea) / (0.07 * width)) ** 2)).astype(np.float32)
    wobble = 0.012 * height * _smooth_noise(rng, (1, width), (1, 6))[0]
    rpe_base = (
        (params.depth + rng.uniform(-0.02, 0.02)) * height
        + params.tilt * xn * width
        - params.curvature * height * 4 * xn**2
        + wobble
    )
    thickness = params.thickness * height * (1 + 0.08 * _smooth_noise(rng, (1, width), (1, 4))[0])
    thickness = thickness * (1 - pit * pit_profile)
    rpe_thickness = 0.022 * height
    elevation = np.zeros(width, dtype=np.float32)  # RPE lifted above Bruch's membrane
    sub_rpe_level = 0.0
    fluid = np.zeros(width, dtype=np.float32)  # subretinal fluid between retina and RPE
    lesion_mask = np.zeros(width, dtype=np.float32)

    if label == "drusen":
        count = int(rng.integers(3, 8))
        centres = rng.uniform(0.12, 0.88, count) * width
        widths = rng.uniform(0.015, 0.035, count) * width
        heights = rng.uniform(0.03, 0.06, count) * height
        elevation = _bumps(x, centres, widths, heights, power=0.5)
        sub_rpe_level = 0.38
    elif label == "cnv":
        centre = fovea + rng.uniform(-0.1, 0.1) * width
        lesion_width = rng.uniform(0.08, 0.14) * width
        elevation = _bumps(x, [centre], [lesion_width], [rng.uniform(0.06, 0.1) * height], power=0.6)
        elevation *= 1 + 0.15 * _smooth_noise(rng, (1, width), (1, 12))[0]
        fluid = _bumps(x, [centre + rng.uniform(-0.5, 0.5) * lesion_width], [lesion_width * 1.3],
                       [rng.uniform(0.025, 0.05) * height])  # fmt: skip
        lesion_mask = np.clip(elevation / elevation.max(), 0, 1)
        thickness = thickness * (1 + 0.5 * lesion_mask) + 0.4 * pit * pit_profile * thickness
        sub_rpe_level = 0.75
    elif label == "dme":
        swelling = _bumps(x, [fovea], [rng.uniform(0.12, 0.2) * width], [rng.uniform(0.5, 1.0)])
        thickness = thickness * (1 + swelling) + 0.8 * pit * pit_profile * thickness

    bruch = rpe_base + rpe_thickness
    rpe_top = rpe_base - elevation
    retina_bottom = rpe_top - fluid
    # Drusen barely move the inner surface (the outer retina is compressed); a CNV lesion lifts it.
    lift = 0.9 if label == "cnv" else 0.25
    ilm = rpe_base - thickness - lift * (elevation + fluid)
    thickness = retina_bottom - ilm

    # Reflectivity by region, column by column.
    depth_in_retina = (y - ilm) / np.maximum(thickness, 1.0)
    inner_share = 0.5 * (1 - 0.85 * pit * pit_profile) + 1e-3
    squeezed = np.where(
        depth_in_retina < inner_share,
        0.5 * depth_in_retina / inner_share,
        0.5 + 0.5 * (depth_in_retina - inner_share) / (1 - inner_share),
    )
    signal = np.interp(squeezed, _LAYER_DEPTH, _LAYER_LEVEL).astype(np.float32)
    signal *= 1 + 0.12 * _smooth_noise(rng, (height, width), (8, 24))
    signal = np.where((depth_in_retina >= 0) & (y < retina_bottom), signal, 0.0)
    signal = np.where((y >= retina_bottom) & (y < rpe_top), 0.04, signal)  # subretinal fluid
    in_rpe = (y >= rpe_top) & (y < rpe_top + rpe_thickness)
    rpe_gradient = 1.0 - 0.25 * (y - rpe_top) / rpe_thickness
    signal = np.where(in_rpe, rpe_gradient, signal)
    below_rpe_band = y >= rpe_top + rpe_thickness
    in_sub_rpe = below_rpe_band & (y < bruch)
    if sub_rpe_level:
        texture = 1 + (0.35 if label == "cnv" else 0.1) * _smooth_noise(rng, (height, width), (24, 64))
        signal = np.where(in_sub_rpe, sub_rpe_level * texture, signal)
    choroid_depth = y - np.maximum(bruch, rpe_top + rpe_thickness)
    vessels = _smooth_noise(rng, (height, width), (24, 36))
    choroid = (0.42 + 0.22 * vessels) * np.exp(-choroid_depth / (0.11 * height))
    choroid *= 1 - 0.6 * lesion_mask  # the lesion casts a shadow
    signal = np.where(below_rpe_band & ~in_sub_rpe, choroid, signal)
    signal = np.where(below_rpe_band & ~in_sub_rpe & (choroid_depth < 0.008 * height), 0.55, signal)

    # Intraretinal fluid: many cysts in DME, a few in CNV.
    cyst_count = {"dme": int(rng.integers(5, 13)), "cnv": int(rng.integers(0, 4))}.get(label, 0)
    if cyst_count:
        spread = 0.22 if label == "dme" else 0.12
        cx = np.clip(fovea + rng.normal(0, spread * width, cyst_count), 0, width - 1)
        columns = cx.astype(int)
        cy = ilm[columns] + rng.uniform(0.3, 0.75, cyst_count) * thickness[columns]
        ry = rng.uniform(0.12, 0.28, cyst_count) * thickness[columns]
        rx = ry * rng.uniform(0.6, 1.6, cyst_count)
        cysts = _ellipses(signal.shape, list(zip(cy, cx, strict=True)), list(zip(ry, rx, strict=True)))
        signal = np.where(cysts, 0.03, signal)

    # Acquisition: vessel shadows, A-scan stripes, depth fall-off, speckle, noise floor.
    shadows = _bumps(x, rng.uniform(0, width, 3), rng.uniform(1.5, 4, 3), rng.uniform(0.3, 0.6, 3))
    below_nfl = y > ilm + 0.08 * thickness
    signal *= np.where(below_nfl, 1 - np.clip(shadows, 0, 0.7), 1.0)
    signal *= 1 + 0.08 * _smooth_noise(rng, (1, width), (1, 64))
    signal *= np.exp(-np.clip(y - ilm, 0, None) / (1.5 * height))
    speckle = np.exp(params.speckle * rng.standard_normal((height, width), dtype=np.float32))
    floor = params.background * (1 + 0.8 * rng.standard_normal((height, width), dtype=np.float32))
    image = params.brightness * signal * speckle + np.abs(floor)
    if params.wedge:
        side = x / width if params.wedge == 1 else 1 - x / width
        image = np.where(y < 0.08 * height * (1 - side / 0.6), 1.0, image)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def synth_bscan(
    label: str,
    rng: np.random.Generator,
    params: PatientParams | None = None,
    size: tuple[int, int] = (512, 496),
) -> Image.Image:
    """One 8-bit grayscale ('L') synthetic B-scan of `label`; `size` is (width, height)."""
    pixels = np.round(render_bscan(label, rng, params, size) * 255).astype(np.uint8)
    return Image.fromarray(pixels)


def synth_bscan16(
    label: str,
    rng: np.random.Generator,
    params: PatientParams | None = None,
    size: tuple[int, int] = (512, 496),
) -> Image.Image:
    """The 16-bit ('I;16') variant, as some OCT devices export."""
    pixels = np.round(render_bscan(label, rng, params, size) * 65535).astype(np.uint16)
    return Image.fromarray(pixels)


def _class_list(classes: str | Iterable[str]) -> tuple[str, ...]:
    names = class_names(classes) if isinstance(classes, str) else tuple(classes)
    return tuple(parse_label(name, _ALL_LABELS) for name in names)


def generate_dataset(
    out_dir: str | Path,
    patients: int,
    bscans_per_patient: int,
    classes: str | Iterable[str] = "neh3",
    seed: int = 0,
    size: tuple[int, int] = (512, 496),
    progress: bool = False,
) -> Path:
    """Write `patients` x `bscans_per_patient` PNGs to `out_dir/<CLASS>/` and a manifest; return its path.

    Each patient has one class, classes are balanced across patients, and file names follow the
    Kermany pattern `<CLASS>-S0001-<n>.png`, so `index_kermany` reads the folder too.
    """
    if patients < 1 or bscans_per_patient < 1:
        raise DataError(f"need at least 1 patient and 1 B-scan each, got {patients} x {bscans_per_patient}")
    labels = _class_list(classes)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir}: not empty; choose a new folder so no old image mixes in")
    # Balanced, then shuffled so class does not follow the patient number.
    order = np.random.default_rng([seed, 0]).permutation(patients)
    patient_labels = [labels[int(i) % len(labels)] for i in order]
    samples = []
    bar = tqdm(total=patients * bscans_per_patient, desc="synthesising", unit="img", disable=not progress)
    for index, label in enumerate(patient_labels):
        patient_id = f"S{index + 1:04d}"
        # One stream per patient: a patient's scans do not depend on how many patients came before.
        rng = np.random.default_rng([seed, 1, index])
        params = PatientParams.sample(rng)
        folder = out_dir / label.upper()
        folder.mkdir(parents=True, exist_ok=True)
        for scan in range(1, bscans_per_patient + 1):
            path = folder / f"{label.upper()}-{patient_id}-{scan}.png"
            synth_bscan(label, rng, params, size).save(path, format="PNG")
            samples.append(Sample(path.as_posix(), label, patient_id, f"{patient_id}-V1"))
            bar.update()
    bar.close()
    return write_manifest(samples, out_dir / "manifest.csv")
