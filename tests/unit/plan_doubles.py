"""Stand-ins for the camera and scan controller in tests of plans' message structure.

They carry only the signals and flyer methods the plans read (no physics), so a plan
can be driven message by message without a RunEngine; the system tests fly the real
devices.
"""

from __future__ import annotations

from ophyd import Component as Cpt
from ophyd import Device, Signal


class FlyerDouble(Device):
    """The flyer methods the protocol checks look for."""

    def kickoff(self): ...

    def complete(self): ...


class CameraDouble(FlyerDouble):
    frame_rate = Cpt(Signal, value=1000.0, kind="config")
    dose = Cpt(Signal, value=1.0, kind="config")

    def describe_collect(self):
        return {}

    def collect_asset_docs(self, index=None):
        yield from ()


class ScanDouble(FlyerDouble):
    nx = Cpt(Signal, value=1, kind="config")
    ny = Cpt(Signal, value=1, kind="config")
    repeats = Cpt(Signal, value=1, kind="config")
    dwell = Cpt(Signal, value=1.0, kind="config")
    line_flyback = Cpt(Signal, value=0.0, kind="config")
    frame_flyback = Cpt(Signal, value=0.0, kind="config")


def messages(plan) -> list:
    """Drive a plan as the RunEngine would, answering every ``wait`` with "done"."""
    msgs, reply = [], None
    try:
        while True:
            msg = plan.send(reply)
            msgs.append(msg)
            reply = True if msg.command == "wait" else None
    except StopIteration:
        return msgs
