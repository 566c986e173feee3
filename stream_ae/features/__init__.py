"""Step 2 of the flow: events become the model's input matrix.

* :mod:`stream_ae.features.encoder`: the declared schema and its column-wise encoder (fit,
  encode, decode back to event units);
* :mod:`stream_ae.features.featurize`: the declared fields, then the entity features from
  :mod:`stream_ae.entities` (one implementation for the worker and every offline tool).
"""
