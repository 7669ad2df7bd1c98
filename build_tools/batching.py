"""What keeps Triton 2.51's dynamic batcher free of its 500 ms stall (docs/stall.md).

The batcher prefetches payloads only when the model's default queue policy has no ``max_queue_size``,
no timeout and no timeout override (``src/scheduler_utils.cc:364-367`` at r24.10); without
prefetching it waits for an instance with a wake-up that can be lost, and sleeps 500 ms. Preferred
batch sizes make ``Enqueue`` skip its wake-up until the queue reaches the next preferred size. This
module names the spec fields that do either, so the linter can warn where it matters: the embedded
flavor, whose CPU instances are busy (and preempted) often enough for the race to show.
"""

from __future__ import annotations

from build_tools.spec import DeploySpec, DynamicBatchingSpec

STALL_DOC = "docs/stall.md"


def prefetch_blockers(db: DynamicBatchingSpec) -> list[str]:
    """The dynamic_batching fields that switch Triton's payload prefetching off."""
    fields = []
    if db.max_queue_size:
        fields.append(f"max_queue_size: {db.max_queue_size}")
    if db.default_timeout_microseconds:
        fields.append(f"default_timeout_microseconds: {db.default_timeout_microseconds}")
    if db.allow_timeout_override:
        fields.append("allow_timeout_override: true")
    return fields


def stall_warnings(spec: DeploySpec) -> list[str]:
    """One warning per dynamically batched model whose settings bring the 500 ms stall back on the
    embedded flavor; empty when the spec has no embedded flavor."""
    if "embedded" not in spec.flavors:
        return []
    warnings = []
    for name, model in spec.models.items():
        db = model.dynamic_batching
        if db is None:
            continue
        where = f"models.{name}.dynamic_batching"
        blockers = prefetch_blockers(db)
        if blockers:
            warnings.append(
                f"{where}: {', '.join(blockers)} turns Triton's payload prefetching off; on the embedded "
                f"flavor the batcher can then miss a wake-up and hold requests for 500 ms (see "
                f"{STALL_DOC}); remove the queue policy unless this model must shed load"
            )
        if db.preferred_batch_size:
            warnings.append(
                f"{where}.preferred_batch_size: {db.preferred_batch_size}: the batcher is not woken until "
                f"the queue reaches the next preferred size and can sleep 500 ms under closed-loop load "
                f"(see {STALL_DOC}); leave it empty on the embedded flavor"
            )
    return warnings
