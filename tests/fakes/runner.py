"""A PipelineRunner that does what the test scripts, and records every call."""

from __future__ import annotations

from controller.ports import PipelineError, PipelineRef, PipelineRequest, PipelineStatus


class ScriptedRunner:
    def __init__(self) -> None:
        self.create_settle_s = 0.0
        self.pipelines: dict[str, PipelineRef] = {}
        self.states: dict[str, PipelineStatus] = {}
        self.trigger_errors: list[PipelineError] = []
        self.calls: list[tuple[str, str]] = []

    async def find(self, request: PipelineRequest) -> PipelineRef | None:
        self.calls.append(("find", request.run_id))
        return self.pipelines.get(request.run_id)

    async def trigger(self, request: PipelineRequest) -> PipelineRef:
        self.calls.append(("trigger", request.run_id))
        if self.trigger_errors:
            raise self.trigger_errors.pop(0)
        ref = PipelineRef(id=f"p-{len(self.pipelines) + 1}", web_url=f"https://gitlab.test/p/{request.run_id}")
        self.pipelines[request.run_id] = ref
        self.states[ref.id] = PipelineStatus("running")
        return ref

    async def status(self, ref: PipelineRef) -> PipelineStatus:
        self.calls.append(("status", ref.id))
        return self.states[ref.id]

    async def cancel(self, ref: PipelineRef) -> None:
        self.calls.append(("cancel", ref.id))
        self.states[ref.id] = PipelineStatus("canceled")

    def finish(self, run_id: str, state: str, detail: str = "") -> None:
        self.states[self.pipelines[run_id].id] = PipelineStatus(state, detail)

    def triggers(self) -> list[str]:
        return [r for c, r in self.calls if c == "trigger"]
