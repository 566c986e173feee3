"""The post-score stage of the hot path: raw scores become published scores, alarms and incidents."""

from stream_ae.alarms.stage import Alarms, judge_rows

__all__ = ["Alarms", "judge_rows"]
