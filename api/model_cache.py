"""The models the API generates with: loaded on first use, at most ``MOL_RESIDENT_MODELS`` kept (least recently
used evicted), and the bounded pool of threads that loads them and runs every generation (never the event loop)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mol_engine.generate import LoadedModel, ModelSource, load_model
from store.settings import Settings

from .owner_limits import OwnerLimits


class ModelCache:
    """``get(source)`` -> the loaded model, loading it at most once while it stays resident."""

    def __init__(self, capacity: int, load: Callable[[ModelSource], LoadedModel]) -> None:
        self.capacity, self._load = capacity, load
        self._models: OrderedDict[ModelSource, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()  # guards the dict; held for moments only
        self._loading = threading.Lock()  # one load at a time: two loads of one model never run, memory stays bounded
        self.loads = 0
        self.evicted: list[ModelSource] = []

    def resident(self) -> list[ModelSource]:
        """The resident models, least recently used first."""
        with self._lock:
            return list(self._models)

    def get(self, source: ModelSource) -> LoadedModel:
        """The model of ``source``, loaded now if it is not resident (blocking: call it from a worker thread)."""
        found = self._lookup(source)
        if found is not None:
            return found
        with self._loading:
            found = self._lookup(source)  # loaded by the request this one waited for
            if found is not None:
                return found
            loaded = self._load(source)
            self.loads += 1
            with self._lock:
                self._models[source] = loaded
                while len(self._models) > self.capacity:  # generations still running keep their model alive
                    self.evicted.append(self._models.popitem(last=False)[0])
            return loaded

    def _lookup(self, source: ModelSource) -> LoadedModel | None:
        with self._lock:
            if source in self._models:
                self._models.move_to_end(source)
                return self._models[source]
            return None


class Serving:
    """Generation's share of one API process: the model cache, its threads, each owner's share of them
    (``owners``: MOL_GENERATIONS_PER_OWNER), and counts the tests read."""

    def __init__(self, settings: Settings) -> None:
        cache_dir = settings.serving_dir
        self.models = ModelCache(settings.resident_models, lambda source: load_model(source, cache_dir))
        self.threads = ThreadPoolExecutor(settings.generation_threads, thread_name_prefix="mol-generate")
        self.owners = OwnerLimits(settings.generations_per_owner)
        self.finished: dict[str, int] = {}  # finish_reason -> generations that ended so

    def count(self, finish_reason: str) -> None:
        self.finished[finish_reason] = self.finished.get(finish_reason, 0) + 1


_create = threading.Lock()


def serving_of(state, settings: Settings) -> Serving:
    """The app's Serving (``state`` is ``app.state``), made on the first generation request."""
    with _create:
        if getattr(state, "serving", None) is None:
            state.serving = Serving(settings)
        return state.serving
