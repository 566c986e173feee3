"""stream-ae: streaming anomaly detection for Kafka with a noise-contrastive autoencoder."""

__version__ = "0.1.0"
