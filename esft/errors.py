"""The error hierarchy of the esft library: every message names the argument at fault and the fix."""

from __future__ import annotations


class ESFTError(Exception):
    """Base class of every error the library raises on purpose.

    Attributes:
        code: a short machine-readable code (the service copies it into ``error.code``).
        param: the argument or input the error is about (``error.param``), if any.
    """

    code = "esft_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class ConfigError(ESFTError):
    """A configuration value is invalid. Collects every problem before raising."""

    code = "invalid_config"

    def __init__(self, problems: list[str] | str, *, param: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems), param=param)


class DataFormatError(ESFTError):
    """A dataset line is malformed. ``line`` is 1-based; ``errors`` lists (line, code, message)."""

    code = "invalid_data"

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        code: str | None = None,
        param: str | None = None,
        errors: list[tuple[int, str, str]] | None = None,
    ):
        where = f"line {line}: " if line is not None else ""
        super().__init__(where + message, param=param, code=code)
        self.line = line
        self.errors = errors or []


class UnsupportedModelError(ESFTError):
    """The model is not a Mixture-of-Experts model ESFT can train (the message names the family and why)."""

    code = "unsupported_model"


class AdapterMismatchError(ESFTError):
    """An adapter or expert config was made for a different base model."""

    code = "adapter_mismatch"


class CheckpointError(ESFTError):
    """A checkpoint is missing, incomplete or incompatible with the run being resumed."""

    code = "invalid_checkpoint"


class TrainingCancelled(ESFTError):
    """Raised by ``train`` when ``should_stop`` asked it to stop; the last checkpoint is kept."""

    code = "cancelled"


class OutboundURLError(ESFTError):
    """A URL the library would call (an LLM judge, a webhook) is not allowed by the operator's allowlist."""

    code = "outbound_url_not_allowed"
