"""Full fine-tuning: every parameter trains; the result is a whole model."""

from esft.methods.fft.config import FFTConfig
from esft.methods.fft.model import FFTModel, get_fft_model
from esft.methods.registry import Method, register_method

register_method(Method("fft", FFTConfig, get_fft_model, FFTModel.from_pretrained, saved_as="model"))

__all__ = ["FFTConfig", "FFTModel", "get_fft_model"]
