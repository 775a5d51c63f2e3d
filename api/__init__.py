"""The ESFT fine-tuning service: an OpenAI-style REST control plane (FastAPI) over the ``esft`` library."""
