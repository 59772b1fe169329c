"""Settings from the environment and the TOML file, validated at start."""

from __future__ import annotations

import pytest

from services.detector.settings import DetectorSettings
from services.runtime.settings import SettingsError, load_settings


def test_defaults_environment_and_file_in_order_of_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("FACESEARCH_CONFIG", raising=False)
    defaults = load_settings(DetectorSettings)
    assert (defaults.port, defaults.max_side, defaults.backend) == (50051, 1280, "mtcnn")

    config = tmp_path / "facesearch.toml"
    config.write_text(
        "[detector]\nmax_side = 1600\nport = 6000\nretry_confidences = [0.85, 0.75]\n[search]\nport = 7\n"
    )
    monkeypatch.setenv("FACESEARCH_CONFIG", str(config))
    from_file = load_settings(DetectorSettings)
    assert (from_file.max_side, from_file.port, from_file.retry_confidences) == (1600, 6000, [0.85, 0.75])

    monkeypatch.setenv("FACESEARCH_DETECTOR_PORT", "6001")
    monkeypatch.setenv("FACESEARCH_DETECTOR_RETRY_CONFIDENCES", "[0.8]")
    from_env = load_settings(DetectorSettings)
    assert (from_env.port, from_env.max_side, from_env.retry_confidences) == (6001, 1600, [0.8])

    assert load_settings(DetectorSettings, port=6002).port == 6002


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"min_confidence": 0}, ["min_confidence", "FACESEARCH_DETECTOR_MIN_CONFIDENCE"]),
        ({"retry_confidences": [0.7, 0.8]}, ["strictly decreasing"]),
        ({"retry_confidences": [0.95]}, ["below min_confidence"]),
        ({"crop_margin": 0.5}, ["crop_margin"]),
        ({"port": 70000}, ["port"]),
        ({"backend": "yolo"}, ["FACESEARCH_DETECTOR_YOLO_WEIGHTS"]),
        ({"backend": "yolo", "yolo_weights": "/no/such/face.pt"}, ["not found", "/no/such/face.pt"]),
        ({"no_such_setting": 1}, ["no_such_setting"]),
    ],
)
def test_invalid_settings_raise_one_readable_error(overrides, words, monkeypatch):
    monkeypatch.delenv("FACESEARCH_CONFIG", raising=False)
    with pytest.raises(SettingsError) as caught:
        load_settings(DetectorSettings, **overrides)
    message = str(caught.value)
    assert message.startswith("invalid detector settings")
    for word in words:
        assert word in message


def test_a_broken_config_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("FACESEARCH_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match="no such file"):
        load_settings(DetectorSettings)
    broken = tmp_path / "broken.toml"
    broken.write_text("[detector\nport = ")
    monkeypatch.setenv("FACESEARCH_CONFIG", str(broken))
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(DetectorSettings)


def test_gateway_thresholds_come_per_model_from_the_environment(monkeypatch):
    from gateway.settings import GatewaySettings

    monkeypatch.setenv("FACESEARCH_GATEWAY_SIMILARITY_THRESHOLDS", '{"facenet-casia": 0.5}')
    settings = load_settings(GatewaySettings)
    assert settings.threshold("facenet-casia") == 0.5
    with pytest.raises(ValueError, match="no similarity threshold configured for model 'facenet-vggface2'"):
        settings.threshold("facenet-vggface2")
    monkeypatch.setenv("FACESEARCH_GATEWAY_SIMILARITY_THRESHOLDS", '{"facenet-casia": 1.5}')
    with pytest.raises(SettingsError, match="FACESEARCH_GATEWAY_SIMILARITY_THRESHOLDS"):
        load_settings(GatewaySettings)


@pytest.mark.parametrize(
    "settings_cls", ["gateway.settings:GatewaySettings", "services.search.settings:SearchSettings"]
)
def test_page_token_keys_are_secret_and_long_enough(settings_cls, monkeypatch):
    import importlib

    module, name = settings_cls.split(":")
    cls = getattr(importlib.import_module(module), name)
    monkeypatch.delenv("FACESEARCH_CONFIG", raising=False)
    with pytest.raises(SettingsError, match="at least 16 characters"):
        load_settings(cls, page_token_key="short")
    settings = load_settings(cls, page_token_key="a key of twenty chars")
    assert "twenty" not in repr(settings), "the key is not shown in logs"
    assert settings.page_token_key.get_secret_value() == "a key of twenty chars"


def test_up_gives_the_detector_the_embedders_model(monkeypatch):
    from launcher.processes import detector_model
    from services.embedder.settings import EmbedderSettings

    monkeypatch.delenv("FACESEARCH_CONFIG", raising=False)
    dlib = EmbedderSettings(weights="dlib")
    assert detector_model(DetectorSettings(), dlib) == "dlib-resnet", "the detector follows the embedder"
    assert detector_model(DetectorSettings(), EmbedderSettings()) == "facenet-casia"
    assert detector_model(DetectorSettings(embedding_model="dlib-resnet"), dlib) == "dlib-resnet"
    with pytest.raises(SettingsError, match="FACESEARCH_DETECTOR_EMBEDDING_MODEL=dlib-resnet"):
        detector_model(DetectorSettings(embedding_model="facenet-casia"), dlib)
