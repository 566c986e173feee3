"""The autoencoder model family behind one estimator interface."""

from stream_ae.models.detector import (
    AutoencoderDetector,
    DegenerateDataError,
    NotFittedError,
    resolve_device,
    variants,
)

__all__ = ["AutoencoderDetector", "DegenerateDataError", "NotFittedError", "resolve_device", "variants"]
