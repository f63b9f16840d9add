"""One request as the request path sees it, without HTTP: what it runs against (the scheduler for
local models, the upstreams for remote ones), who asks (the key's principal), and the record the
access log and metrics read once it ends."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.access.keys import Principal
from gateway.observability.record import RequestRecord
from gateway.protocol import ChatCompletionRequest
from gateway.scheduler import Scheduler
from gateway.scheduler.fairness import Priority, Tenant
from gateway.upstream.proxy import Upstreams


@dataclass(frozen=True)
class Call:
    scheduler: Scheduler
    upstreams: Upstreams
    principal: Principal
    record: RequestRecord | None = None

    def tenant(self, flex: bool = False) -> Tenant:
        """How the scheduler orders this caller's turns: its key's priority, lowered to batch when the
        request asks for the flex tier (never raised)."""
        p = self.principal
        priority = Priority.BATCH if flex or p.priority == Priority.BATCH.value else Priority.INTERACTIVE
        return Tenant(p.key_id, priority, p.max_concurrent)

    def service_tier(self, flex: bool, asked: str | None) -> str | None:
        """The tier to echo, as OpenAI does when a request names one: the one it runs at."""
        if asked is None:
            return None
        return "flex" if self.tenant(flex).priority is Priority.BATCH else "default"

    def note_chat(self, chat: ChatCompletionRequest) -> None:
        """The chat's messages, in the record when the access log logs content (`log_content`)."""
        if self.record is not None and self.record.output is not None:
            self.record.messages = [m.model_dump(exclude_none=True) for m in chat.messages]
