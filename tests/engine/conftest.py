"""Engine fixtures: watching the frozen base models a test loads."""

from __future__ import annotations

import itertools
import weakref

import pytest

from mol_engine import reference as reference_module


class BaseLoads(list):
    """Weak references to every frozen base model loaded (``FrozenCopyReference.load``) while a test runs."""

    def freed(self, start: int = 0) -> bool:
        """Whether the weights of every load from ``start`` on are gone (module collected, or tensors on meta)."""
        models = [ref() for ref in self[start:]]
        return all(m is None or all(t.is_meta for t in itertools.chain(m.parameters(), m.buffers())) for m in models)


@pytest.fixture
def base_loads(monkeypatch) -> BaseLoads:
    """Records each frozen base model loaded from here on."""
    loads = BaseLoads()
    load = reference_module.FrozenCopyReference.load.__func__

    def tracked(cls, *args):
        made = load(cls, *args)
        loads.append(weakref.ref(made.model))
        return made

    monkeypatch.setattr(reference_module.FrozenCopyReference, "load", classmethod(tracked))
    return loads
