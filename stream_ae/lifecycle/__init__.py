"""How a trained model reaches the workers: artifacts on disk, the registry, announcements.

* :mod:`stream_ae.lifecycle.artifact_format`: safetensors weights and a checksummed JSON manifest;
* :mod:`stream_ae.lifecycle.artifacts`: an artifact loaded as encoder, detector and threshold;
* :mod:`stream_ae.lifecycle.registry`: versioned artifact directories with an atomic ``LATEST``.
"""
