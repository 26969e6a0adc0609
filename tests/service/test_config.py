"""Settings: defaults that resolve sensibly, and refusals that name the variable and the fix."""

from __future__ import annotations

import pytest
import torch

from kdoct.errors import ConfigError


def test_second_opinion_defaults_to_auto_with_a_teacher_and_never_without(make_settings):
    assert make_settings().second_opinion_policy == "auto"
    assert make_settings(teacher_bundle=None).second_opinion_policy == "never"


def test_cpu_machine_serves_with_onnx_runtime(make_settings):
    if torch.cuda.is_available():
        pytest.skip("this check is for machines without CUDA")
    settings = make_settings()
    assert (settings.resolved_runtime, settings.resolved_device) == ("onnx", "cpu")


def test_settings_are_read_from_the_environment(make_settings, monkeypatch):
    monkeypatch.setenv("KDOCT_MAX_QUEUE", "33")
    monkeypatch.setenv("KDOCT_SECOND_OPINION", "never")
    settings = make_settings()
    assert settings.max_queue == 33 and settings.second_opinion_policy == "never"


def test_settings_are_read_from_dot_env(make_settings, bundles):
    (bundles["student"].parent / ".env").write_text("KDOCT_MAX_UPLOAD_BYTES=123456\n")
    try:
        assert make_settings().max_upload_bytes == 123456
    finally:
        (bundles["student"].parent / ".env").unlink()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"teacher_bundle": None, "second_opinion": "always"}, "KDOCT_SECOND_OPINION=always needs a teacher"),
        ({"host": "0.0.0.0"}, "KDOCT_HOST=0.0.0.0"),
        ({"max_batch_size": 0}, "KDOCT_MAX_BATCH_SIZE"),
        ({"max_batch_size": 16, "max_queue": 8}, "KDOCT_MAX_QUEUE (8) is smaller"),
        ({"precision": "fp16", "device": "cpu"}, "KDOCT_PRECISION=fp16"),
        ({"second_opinion_threshold": 1.5}, "KDOCT_SECOND_OPINION_THRESHOLD"),
        ({"runtime": "tensorflow"}, "KDOCT_RUNTIME"),
        ({"max_upload_bytes": 10}, "KDOCT_MAX_UPLOAD_BYTES"),
        (
            {"auth": "enabled", "database_url": "postgresql://kdoct_app:change-me-runtime@db:5432/kdoct"},
            "placeholder password from .env.example",
        ),
    ],
)
def test_unsafe_or_contradictory_settings_are_refused(make_settings, overrides, message):
    with pytest.raises(ConfigError, match="invalid service settings") as caught:
        make_settings(**overrides)
    assert message in str(caught.value)


def test_the_same_bundle_cannot_be_its_own_teacher(make_settings, bundles):
    with pytest.raises(ConfigError, match="same bundle"):
        make_settings(teacher_bundle=bundles["student"])


def test_cuda_without_a_gpu_is_refused(make_settings):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(ConfigError, match="PyTorch sees no CUDA device"):
        make_settings(runtime="torch", device="cuda")


def test_a_missing_student_bundle_names_the_variable(make_settings):
    from service.config import load_settings

    with pytest.raises(ConfigError, match="KDOCT_STUDENT_BUNDLE: is required"):
        load_settings()
    assert make_settings().student_bundle.is_dir()
