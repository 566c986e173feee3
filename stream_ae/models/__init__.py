"""The autoencoder model family behind one estimator interface."""

from stream_ae.models.detector import (
    AutoencoderDetector,
    DegenerateDataError,
    NotFittedError,
    NotGenerativeError,
    resolve_device,
    variants,
)

__all__ = [
    "AutoencoderDetector",
    "DegenerateDataError",
    "NotFittedError",
    "NotGenerativeError",
    "resolve_device",
    "variants",
]
