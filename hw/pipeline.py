"""Stall-all control for a fixed-latency stream pipeline.

Every stage register advances together when the output is free (``ce``); a stage-valid shift
register tracks which stages hold data. ``i.ready`` is ``ce`` (combinational from ``o.ready``),
which the ``lib.stream`` rules allow; ``o.valid`` comes from a register, never from ``o.ready``.
"""
from amaranth.hdl import Signal

__all__ = ["pipeline_control", "pipeline_stages"]


def pipeline_control(m, i, o, latency):
    """Drive ``i.ready`` and ``o.valid`` for a ``latency``-stage pipeline; return ``ce``.

    The caller registers its datapath with ``with m.If(ce): m.d.sync += ...``, one register
    level per stage, and drives ``o.payload`` from the last stage.
    """
    ce, _ = pipeline_stages(m, i, o, latency)
    return ce


def pipeline_stages(m, i, o, latency, *, hold=None, emit=None):
    """:func:`pipeline_control` that also returns the stage-valid bits: ``(ce, valid)``.

    ``valid[k]`` is set while stage ``k + 1`` holds an item (``valid[-1]``: the output stage), for
    datapaths with state that bubbles must not touch (accumulators, memory writes).

    hold : Value, optional
        While 1, the item offered on ``i`` is not accepted (``i.ready`` low) and a bubble enters
        stage 1 instead; the stages behind keep moving. For interlocks (read-after-write). It may
        depend on ``i.payload`` but not on ``i.ready``.
    emit : Value, optional
        Computed from the output stage's registers: an item with ``emit`` low leaves the pipeline
        without a transfer on ``o`` (``o.valid = valid[-1] & emit``), so it never stalls.
    """
    if latency < 1:
        raise ValueError(f"pipeline latency must be at least 1, not {latency}")
    ce = Signal()
    valid = Signal(latency)
    take = i.valid if hold is None else i.valid & ~hold
    m.d.comb += [
        ce.eq(~o.valid | o.ready),
        i.ready.eq(ce if hold is None else ce & ~hold),
        o.valid.eq(valid[-1] if emit is None else valid[-1] & emit),
    ]
    with m.If(ce):
        m.d.sync += valid.eq((valid << 1) | take)
    return ce, valid
