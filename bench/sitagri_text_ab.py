"""A/B of the Sitagri marketPrice path in one process: a baseline tree against this one.

Issue #16 (MarketPrice's decimals carried as canonical text): both trees' ``bench/peer_cryptofeed.py``
are loaded into this process (the baseline's marketbus and services under their own module objects,
evicted from ``sys.modules`` before this tree's are imported), their Sitagri paths run on the same
pushes in alternating rounds, timed on CPU time (``time.process_time``). It first checks that both
trees publish the same bytes for every push of the corpus (payload and header block).

Baseline: a ``git archive`` of the commit to compare with, plus this tree's built ``_checks`` (the
baseline's API is a subset), e.g.::

    mkdir /tmp/base && git archive 98bff28 shared services bench | tar -x -C /tmp/base
    cp shared/marketbus/contracts/_checks.*.so /tmp/base/shared/marketbus/contracts/
    .venv/bin/python bench/sitagri_text_ab.py /tmp/base --rounds 5
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def load_tree(root: Path, name: str) -> ModuleType:
    """``root``'s bench/peer_cryptofeed.py as module ``name``, with the marketbus and services it
    imported kept alive by its references only (evicted from sys.modules and sys.path)."""
    spec = importlib.util.spec_from_file_location(name, root / "bench" / "peer_cryptofeed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for key in list(sys.modules):
        if key.split(".")[0] in ("marketbus", "services"):
            del sys.modules[key]
    sys.path[:] = [p for p in sys.path if not p.startswith(str(root))]
    return module


def published(peer: ModuleType, pushes: list[bytes]) -> list[tuple[Any, ...]]:
    """What a tree publishes for each push: its live path (``live_push`` where it has one, else
    ``push(decode_push(raw))``), then ``EventWire.message``."""
    ts, wire, s = 1_700_000_000_000_000_000, peer.EventWire(), peer.sitagri
    if hasattr(s, "live_push"):
        return [wire.message(s.live_push(raw, ts)[2]) for raw in pushes]
    return [wire.message(s.push(s.decode_push(raw), ts)) for raw in pushes]


def single(peer: ModuleType, pushes: list[bytes]) -> int:
    """Pushes -> events -> subject, payload, header block: the tree's own bench path
    (``sitagri_single``: its live path, then ``EventWire.message`` as ``publish_event`` sends)."""
    return int(peer.sitagri_single(pushes, peer.Wire()))


def batch(peer: ModuleType, pushes: list[bytes]) -> int:
    """The bench's batch form (1000 pushes of a quote -> one envelope), the same in both trees."""
    return int(peer.sitagri_batch(pushes, peer.Wire()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trades", type=int, default=100_000)
    args = parser.parse_args()
    base = load_tree(args.baseline.resolve(), "peer_baseline")
    this = load_tree(ROOT, "peer_this")
    assert base.sitagri.__file__ != this.sitagri.__file__
    pushes = this.sitagri_pushes(this.corpus(args.trades))
    a, b = published(base, pushes), published(this, pushes)
    same = sum(x == y for x, y in zip(a, b, strict=True))
    print(f"same subject, payload and header block for {same:,} of {len(pushes):,} pushes")
    assert same == len(pushes)
    paths = {"single events": single, "1000 per envelope": batch}
    for label, fn in paths.items():
        times: dict[str, list[float]] = {"baseline": [], "this": []}
        for _ in range(args.rounds):
            for name, peer in (("baseline", base), ("this", this)):
                t0 = time.process_time()
                n = fn(peer, pushes)
                times[name].append(n / (time.process_time() - t0))
        med = {k: statistics.median(v) for k, v in times.items()}
        rounds = " / ".join(f"{x / y:.2f}" for x, y in zip(times["this"], times["baseline"], strict=True))
        print(f"{label}: baseline {' '.join(f'{v / 1e3:.0f}k' for v in times['baseline'])} | this "
              f"{' '.join(f'{v / 1e3:.0f}k' for v in times['this'])} ev/CPU-s; median {med['baseline']:,.0f} -> "
              f"{med['this']:,.0f} ({med['this'] / med['baseline']:.2f}x; paired {rounds})")


if __name__ == "__main__":
    main()
