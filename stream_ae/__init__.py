"""stream-ae: streaming anomaly detection for Kafka with a noise-contrastive autoencoder.

The packages follow the flow of an event, and import only from those before them:

    input      records from Kafka to JSON objects, or dead letters
    features   events to the model's matrix (with :mod:`stream_ae.entities`, per-entity state)
    scoring    scores on the device, the calibrated threshold, explanations
    output     output records by topic
    pipeline   the four steps above as one function of a batch, without Kafka

Around them: :mod:`stream_ae.models` (the estimators), :mod:`stream_ae.lifecycle` (artifacts,
registry), :mod:`stream_ae.kafka` (admin, batch production, a local broker),
:mod:`stream_ae.worker` (the service that runs the pipeline on Kafka),
:mod:`stream_ae.operation` (metrics, threads), :mod:`stream_ae.settings` (one typed settings
object) and :mod:`stream_ae.tools` (command line, demo, producers).
"""

__version__ = "0.1.0"
