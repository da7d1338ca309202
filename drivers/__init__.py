"""The hardware abstraction layer of evse-daemon.

One ``typing.Protocol`` per driver family lives in ``drivers.protocols``; the real and the mock
implementations sit beside it. Nothing is imported here on purpose: hardware libraries must only
be imported by the driver module that needs them, so that ``import drivers`` works on a laptop.
"""
