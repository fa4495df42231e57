"""Who runs a loop's forwards: one at a time, batched, or through a pipeline.

A loop submits FlowRequests in the schedule's order and asks for results when it
needs them. Executors may run work later than it was submitted, but never in
another order, so the cache sees the same reads and writes whichever runs it:

- SequentialExecutor runs each request when it is submitted (the reference);
- BatchingExecutor holds requests until a result is needed, then runs them
  all in one batched forward (predict_flow_many);
- engine.parallel's pipeline sends each request into the pipeline at once and
  waits only for the result asked for, so the stages overlap.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from engine.protocols import BatchedGenerator, CausalGenerator, FlowRequest


class FlowHandle:
    """A submitted request's result, filled when it has run."""

    __slots__ = ("flow", "request")

    def __init__(self, request: FlowRequest | None) -> None:
        self.request = request
        self.flow: Tensor | None = None


@runtime_checkable
class FlowExecutor(Protocol):
    def submit(self, request: FlowRequest) -> Any:
        """Queue a forward; returns a handle for result()."""
        ...

    def result(self, handle: Any) -> Tensor:
        """The flow of a submitted forward (empty for a committing one); waits if needed."""
        ...

    def flush(self) -> None:
        """Run everything submitted so far (before a prompt switch edits shared state)."""
        ...


class SequentialExecutor:
    """Runs every request when it is submitted: the reference order, batch 1."""

    def __init__(self, model: CausalGenerator) -> None:
        self.model = model

    def submit(self, request: FlowRequest) -> FlowHandle:
        handle = FlowHandle(None)
        handle.flow = self.model.predict_flow(*request.args())
        return handle

    def result(self, handle: FlowHandle) -> Tensor:
        assert handle.flow is not None
        return handle.flow

    def flush(self) -> None:
        pass


class BatchingExecutor:
    """Defers requests until a result is needed, then runs all of them as one batch.

    The loop only asks for a result once every request it depends on was
    submitted, so whatever is pending at that moment is independent work: a
    stream batch's whole tick.
    """

    def __init__(self, model: BatchedGenerator) -> None:
        self.model = model
        self._pending: list[FlowHandle] = []
        self.batches = 0  # forwards run, for tests and stats

    def submit(self, request: FlowRequest) -> FlowHandle:
        handle = FlowHandle(request)
        self._pending.append(handle)
        return handle

    def result(self, handle: FlowHandle) -> Tensor:
        if handle.flow is None:
            self.flush()
        assert handle.flow is not None, "result() of a handle from another executor"
        return handle.flow

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        requests = [h.request for h in pending if h.request is not None]
        for handle, flow in zip(pending, self.model.predict_flow_many(requests), strict=True):
            handle.flow, handle.request = flow, None
        self.batches += 1


def executor_for(model: CausalGenerator, *, batched: bool) -> FlowExecutor:
    """The model's own executor if it has one (a pipeline), else batched or sequential."""
    own = getattr(model, "executor", None)
    if isinstance(own, FlowExecutor):
        return own
    if batched and isinstance(model, BatchedGenerator):
        return BatchingExecutor(model)
    return SequentialExecutor(model)
