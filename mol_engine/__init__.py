"""MoL engine: continual pre-training of causal LMs with the Mixture-of-Losses objective.

    from mol_engine import JobSpec, train
    result = train(JobSpec(base_model="path/to/model", domain_data=["d.jsonl"], general_data=["g.jsonl"]), "runs/x")

The names below load on first use (PEP 562): importing one light module of the engine (the spec, the token
store) does not import torch and transformers, so `mol --version`, the API and the Celery worker start fast.
"""

from importlib import import_module

_HOMES = {"Callback": "callbacks", "JsonlLogger": "callbacks", "JobSpec": "spec", "LoraSpec": "spec",
          "TrainResult": "train", "train": "train"}

__all__ = sorted(_HOMES)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'mol_engine' has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
