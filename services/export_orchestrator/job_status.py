"""Progress and status publishing: every state change and progress step of a job is an
:class:`ExportJob` event on ``export.status.<job_id>`` (best effort: the KV record is the truth,
a subscriber that missed an event reads it there)."""

from __future__ import annotations

import contextlib
from typing import Any

from marketbus.contracts import codec, subjects

from .job_records import JobRecord


class JobStatus:
    def __init__(self, js: Any) -> None:
        self.js = js

    async def publish(self, record: JobRecord) -> None:
        with contextlib.suppress(Exception):
            await self.js.publish(subjects.export_status(record.id), codec.encode(record.job),
                                  headers=codec.headers_for(record.job), timeout=2.0)
