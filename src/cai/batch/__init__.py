"""Scheduled batch jobs: the critique loop through the providers' batch APIs, one stage per batch, at the batch
price. `submit` starts (or extends) a job, `tick` advances it (from cron), `status` and `cancel` as named.

    from cai import batch
    batch.submit("prompts.jsonl", out="runs/nightly", model="openai:gpt-4o-mini")
    batch.tick("runs/nightly")

A plugin: it drives the core's pipeline through an engine `Deferral`; the core never imports it.
"""

from cai.batch.api import acancel, asubmit, atick, cancel, status, submit, tick
from cai.batch.job import EXIT_WAITING, TickReport

__all__ = ["EXIT_WAITING", "TickReport", "acancel", "asubmit", "atick", "cancel", "status", "submit", "tick"]
