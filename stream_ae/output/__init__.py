"""Step 4 of the flow: a scored batch becomes output records, per topic, as bytes.

* :mod:`stream_ae.output.records`: the versioned JSON records (anomaly, dead letter, score) and
  their schemas;
* :mod:`stream_ae.output.route`: which records go to which topic, sized to the topics' limits.
"""
