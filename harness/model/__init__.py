"""The shared TransVG-style REC model: `build_model(preset, ...)` and its seams."""
from harness.model.config import PRESETS, ModelConfig, get_config
from harness.model.counting import count_parameters
from harness.model.transvg import COMPONENTS, ENCODER_SIDE, TransVG, component_of


def build_model(preset: str | ModelConfig = "paper", **sizes) -> TransVG:
    """`preset` is a name in PRESETS (with optional max_query_len / vocab_size / image_size) or a config."""
    cfg = preset if isinstance(preset, ModelConfig) else get_config(preset, **sizes)
    return TransVG(cfg)


__all__ = ["PRESETS", "ModelConfig", "get_config", "TransVG", "build_model", "COMPONENTS", "ENCODER_SIDE",
           "component_of", "count_parameters"]
