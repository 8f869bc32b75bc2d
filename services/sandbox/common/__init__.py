"""Shared parts of the vendor sandboxes: deterministic data tapes, fault injection, runner."""

from .base import SandboxRunner, SandboxSettings, SandboxSpec, json_response
from .faults import FaultInjector, FaultMiddleware, FaultSwitches, ScheduledFault
from .tape import Tick, TickTape, stable_hash

__all__ = [
    "FaultInjector", "FaultMiddleware", "FaultSwitches", "SandboxRunner", "SandboxSettings",
    "SandboxSpec", "ScheduledFault", "Tick", "TickTape", "json_response", "stable_hash",
]
