"""Step 1 of the flow: records read from Kafka become Python objects, or dead letters.

* :mod:`stream_ae.input.decode`: input-topic records to JSON objects (whole-batch decode), with
  a dead-letter reason for each record that is not one;
* :mod:`stream_ae.input.source`: where a record lies in Kafka (every record about an input record carries it);
* :mod:`stream_ae.input.verdicts`: the feedback topic's analyst verdicts (``stream-ae.verdict/1``).
"""
