"""Step 3 of the flow: scores, the calibrated threshold and what a flagged event was expected to be.

* :mod:`stream_ae.scoring.scorer`: the model resident on its device, one copy in per batch;
* :mod:`stream_ae.scoring.threshold`: a threshold calibrated to a false-alarm rate, and score drift;
* :mod:`stream_ae.scoring.explain`: each flagged event's top fields, observed against expected.
"""
