"""Full fine-tuning: every parameter trains; the result is a whole model."""

from esft.methods.fft.config import FFTConfig
from esft.methods.registry import Method, lazy, lazy_exports, register_method

register_method(Method("fft", FFTConfig, lazy("esft.methods.fft.model:get_fft_model"),
                       lazy("esft.methods.fft.model:FFTModel.from_pretrained"), saved_as="model"))

__getattr__ = lazy_exports({"FFTModel": "esft.methods.fft.model", "get_fft_model": "esft.methods.fft.model"})
__all__ = ["FFTConfig", "FFTModel", "get_fft_model"]
