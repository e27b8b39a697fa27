"""Stall-all control for a fixed-latency stream pipeline.

Every stage register advances together when the output is free (``ce``); a stage-valid shift
register tracks which stages hold data. ``i.ready`` is ``ce`` (combinational from ``o.ready``),
which the ``lib.stream`` rules allow; ``o.valid`` comes from a register, never from ``o.ready``.
"""
from amaranth.hdl import Signal

__all__ = ["pipeline_control"]


def pipeline_control(m, i, o, latency):
    """Drive ``i.ready`` and ``o.valid`` for a ``latency``-stage pipeline; return ``ce``.

    The caller registers its datapath with ``with m.If(ce): m.d.sync += ...``, one register
    level per stage, and drives ``o.payload`` from the last stage.
    """
    if latency < 1:
        raise ValueError(f"pipeline latency must be at least 1, not {latency}")
    ce = Signal()
    valid = Signal(latency)
    m.d.comb += [
        ce.eq(~o.valid | o.ready),
        i.ready.eq(ce),
        o.valid.eq(valid[-1]),
    ]
    with m.If(ce):
        m.d.sync += valid.eq((valid << 1) | i.valid)
    return ce
