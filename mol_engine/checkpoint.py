"""Atomic training checkpoints, safetensors and JSON only (nothing is unpickled on resume).

Layout of ``checkpoints/step-N/``:
    model/                   Hugging Face directory (full weights + tokenizer) or PEFT adapter (+ tokenizer)
    optimizer.safetensors    optimizer state tensors;   trainer_state.json: step, optimizer groups,
    rng.safetensors          torch RNG states;          scheduler, data position, spec
A checkpoint is written to a temporary sibling and renamed into place, so ``step-N`` exists only complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

_STEP_DIR = re.compile(r"step-(\d+)")
STATE_FILE = "trainer_state.json"


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``out_dir/checkpoints``, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    dirs = checkpoint_dirs(out_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(out_dir: str | Path, step: int, model: nn.Module, tokenizer, optimizer: torch.optim.Optimizer,
                    scheduler, trainer_state: dict[str, Any], keep: int | None = None) -> Path:
    """Write ``checkpoints/step-{step}`` atomically and return its path; prune to the newest ``keep``."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}-", dir=root))
    try:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        tensors, groups = _optimizer_tensors(optimizer)
        save_file(tensors, tmp / "optimizer.safetensors")
        save_file(_rng_tensors(), tmp / "rng.safetensors")
        state = {**trainer_state, "step": step, "optimizer_groups": groups, "scheduler": scheduler.state_dict()}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=_json_default))
        _fsync_tree(tmp)
        if final.exists():  # a re-run of the same step after a resume: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep:
        for old in checkpoint_dirs(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    lora: bool) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG from ``path``; return the trainer state it saved."""
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    _load_weights(path / "model", model, lora)
    _load_optimizer(optimizer, load_file(path / "optimizer.safetensors"), state["optimizer_groups"])
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available() and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"])
    return state


def _load_weights(model_dir: Path, model: nn.Module, lora: bool) -> None:
    if lora:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(model_dir / "adapter_model.safetensors"))
        if result.unexpected_keys:
            raise ValueError(f"{model_dir}: adapter does not match the model: {result.unexpected_keys[:3]}")
        return
    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(shard))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {n for n, p in model.named_parameters(remove_duplicate=False)} - {
        n for n, p in model.named_parameters()
    }
    if unexpected or set(missing) - tied:
        raise ValueError(f"{model_dir}: weights do not match the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = optimizer.state_dict()
    tensors = {}
    for param_id, param_state in sd["state"].items():
        for key, value in param_state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{param_id}.{key}"] = tensor.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _rng_tensors() -> dict[str, torch.Tensor]:
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple | set):
        return list(value)
    if torch.is_tensor(value):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in {STATE_FILE}")


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
