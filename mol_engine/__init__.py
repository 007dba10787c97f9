"""MoL engine: continual pre-training of causal LMs with the Mixture-of-Losses objective.

    from mol_engine import JobSpec, train
    result = train(JobSpec(base_model="path/to/model", domain_data=["d.jsonl"], general_data=["g.jsonl"]), "runs/x")
"""

from .callbacks import Callback, JsonlLogger
from .spec import JobSpec, LoraSpec
from .train import TrainResult, train

__all__ = ["Callback", "JobSpec", "JsonlLogger", "LoraSpec", "TrainResult", "train"]
__version__ = "0.1.0"
