"""(1.1) The erasure bound, `E2C_ERASURE_MAX_DAYS`, and every delay derived from it.

A referral's personal data leaves the broker's files in three steps after its tombstone is
written: the segment holding the tombstone rolls (Kafka rolls only on an append, and never
cleans the active segment), the log cleaner rewrites the closed segments without the
superseded records, and the old files are deleted after `file.delete.delay.ms`. Each step
gets a share of the bound, so that their sum stays inside it:

    roll       segment.ms (= max.compaction.lag.ms)  1/4   + one republishing interval  1/8
    clean      log.cleaner.backoff.ms                 1/8   (at most Kafka's default)
    delete     file.delete.delay.ms                   1/8   (at most Kafka's default)
                                                      ----
                                                      5/8 of the bound, the rest is margin

The republishing interval is the referrals service's erasure job: it publishes again the
tombstones younger than the bound, which appends to their partitions and so makes them roll
on a quiet topic too. Dead letters (they may carry a submission) are deleted by retention:
segment.ms 1/8, retention.ms 1/2, log.retention.check.interval.ms 1/8, file delete 1/8.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 24 * 3600 * 1000
# Kafka's own defaults, kept when the bound is long: the bound only ever shortens them.
CLEANER_BACKOFF_DEFAULT_MS = 15_000
RETENTION_CHECK_DEFAULT_MS = 300_000
INITIAL_TASK_DELAY_DEFAULT_MS = 30_000  # before a broker's first retention check
FILE_DELETE_DEFAULT_MS = 60_000
MIN_DELAY_MS = 100


@dataclass(frozen=True)
class ErasureBound:
    """The delays of every step of an erasure, for a bound of `max_days` (a float: a test
    or an operator proving the erasure shortens it to seconds)."""

    max_days: float

    @property
    def total_ms(self) -> int:
        return max(int(self.max_days * DAY_MS), 8 * MIN_DELAY_MS)

    def _share(self, divisor: int, cap: int | None = None) -> int:
        share = max(self.total_ms // divisor, MIN_DELAY_MS)
        return min(share, cap) if cap is not None else share

    @property
    def segment_ms(self) -> int:
        return self._share(4)

    @property
    def republish_seconds(self) -> float:
        """How often the referrals service publishes the young tombstones again."""
        return self._share(8) / 1000

    @property
    def cleaner_backoff_ms(self) -> int:
        return self._share(8, CLEANER_BACKOFF_DEFAULT_MS)

    @property
    def retention_check_ms(self) -> int:
        return self._share(8, RETENTION_CHECK_DEFAULT_MS)

    @property
    def file_delete_delay_ms(self) -> int:
        return self._share(8, FILE_DELETE_DEFAULT_MS)

    def compacted_topic_config(self) -> dict[str, str]:
        """`e2c.referrals.submitted.v1`: the latest record of each key, tombstones remove."""
        return {
            "cleanup.policy": "compact",
            "retention.ms": "-1",
            "segment.ms": str(self.segment_ms),
            "max.compaction.lag.ms": str(self.segment_ms),
            # The lag above is what bounds the time; a low ratio only cleans sooner.
            "min.cleanable.dirty.ratio": "0.1",
            # The tombstone itself (a referral_id, no personal data) stays one bound.
            "delete.retention.ms": str(self.total_ms),
            "file.delete.delay.ms": str(self.file_delete_delay_ms),
        }

    @property
    def dead_letter_retention_ms(self) -> int:
        """How long operators have to replay a dead letter: half the bound (3.5 days by
        default), the longest that leaves room for its segment's roll, the retention check
        and the file's deletion."""
        return self._share(2)

    def dead_letter_topic_config(self) -> dict[str, str]:
        """`e2c.deadletter.v1`: a letter is gone within the bound (replay it before)."""
        return {
            "cleanup.policy": "delete",
            "retention.ms": str(self.dead_letter_retention_ms),
            "segment.ms": str(self._share(8)),
            "file.delete.delay.ms": str(self.file_delete_delay_ms),
        }

    def broker_settings(self) -> dict[str, int]:
        """The broker-wide delays the topic settings rely on (`deploy.local_kafka`)."""
        return {
            "log.cleaner.backoff.ms": self.cleaner_backoff_ms,
            "log.retention.check.interval.ms": self.retention_check_ms,
            "log.initial.task.delay.ms": self._share(8, INITIAL_TASK_DELAY_DEFAULT_MS),
        }
