"""Helpers for the cocotb testbenches: vectors, clock/reset, packing of flattened payloads,
stream driving with seeded random back-pressure, and a watchdog.

Amaranth flattens a port's signature path with ``__`` (``i__payload``, ``o__valid``) and a
struct/array payload into one vector, LSB first; signedness is lost at the port.
"""
import os
import random

import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

__all__ = ["load_vectors", "save_results", "pack", "unpack", "to_signed", "start", "stream_run"]


def load_vectors():
    return dict(np.load(os.environ["TB_VECTORS"]))


def save_results(**arrays):
    np.savez(os.environ["TB_RESULTS"], **arrays)


def to_signed(x, width):
    x &= (1 << width) - 1
    return x - (1 << width) if x >> (width - 1) else x


def pack(values, width):
    """Pack ``values`` (element 0 in the low bits) into one integer of ``len(values)*width`` bits."""
    out = 0
    for k, v in enumerate(values):
        out |= (int(v) & ((1 << width) - 1)) << (k * width)
    return out


def unpack(word, width, count, signed=False):
    """Inverse of :func:`pack`."""
    vals = [(int(word) >> (k * width)) & ((1 << width) - 1) for k in range(count)]
    return [to_signed(v, width) for v in vals] if signed else vals


# Handshake inputs driven low before reset: an undriven input is X in four-state simulators
# (Icarus), and an X ready or valid would poison the pipeline registers.
IDLE_INPUTS = ("i__valid", "o__ready", "load__valid")


async def start(dut, period_ns=10, reset_cycles=2, idle_inputs=IDLE_INPUTS):
    """Drive the handshake inputs low, start the clock and pulse the synchronous reset."""
    for name in idle_inputs:
        if hasattr(dut, name):
            getattr(dut, name).value = 0
    Clock(dut.clk, period_ns, unit="ns").start()
    dut.rst.value = 1
    for _ in range(reset_cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


async def stream_run(dut, inputs, n_out=None, *, i="i", o="o", stall=0.3, seed=0, max_cycles=None):
    """Push ``inputs`` (ints) through stream ``i`` and collect ``n_out`` raw payloads from ``o``.

    Inputs are driven after each falling edge and handshakes sampled in the read-only phase
    before the next rising edge, so the transfer happens exactly where the DUT sees it.
    Random idle cycles on both sides with probability ``stall``. Raises ``AssertionError``
    (watchdog) after ``max_cycles``.
    """
    inputs = [int(x) for x in inputs]
    n_out = len(inputs) if n_out is None else n_out
    max_cycles = max_cycles or 20 * max(len(inputs), n_out) + 200
    rng = random.Random(seed)
    iv, ip, ir = (getattr(dut, f"{i}__{s}") for s in ("valid", "payload", "ready"))
    ov, op, orr = (getattr(dut, f"{o}__{s}") for s in ("valid", "payload", "ready"))
    outputs, k = [], 0
    offer = False
    for _ in range(max_cycles):
        await FallingEdge(dut.clk)
        if not offer and k < len(inputs) and rng.random() >= stall:
            offer = True
            ip.value = inputs[k]
        iv.value = int(offer)
        orr.value = int(rng.random() >= stall)
        await ReadOnly()
        if offer and int(ir.value):
            k += 1
            offer = False
        if int(ov.value) and int(orr.value):
            outputs.append(int(op.value))
            if len(outputs) == n_out:
                return outputs
    raise AssertionError(f"watchdog: {len(outputs)}/{n_out} outputs after {max_cycles} cycles")
