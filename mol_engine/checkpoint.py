"""Atomic training checkpoints, safetensors and JSON only (nothing is unpickled on resume).

Layout of ``checkpoints/step-N/``:
    model/                   Hugging Face directory (full weights + tokenizer) or PEFT adapter (+ tokenizer)
    optimizer.safetensors    optimizer state tensors;   trainer_state.json: step, optimizer groups,
    rng.safetensors          torch RNG states;          scheduler, data position, spec
A checkpoint is written to a temporary sibling (``.step-N-xxxx``) and renamed into place, so ``step-N`` exists
only complete; only then are older ones pruned. A write that fails (a full disk) removes its temporary directory
and raises :class:`CheckpointError`, leaving the earlier checkpoints as they were.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

_STEP_DIR = re.compile(r"step-(\d+)")
_OS_ERROR = re.compile(r"os error (\d+)")  # how safetensors' Rust writer reports an OSError
STATE_FILE = "trainer_state.json"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the message says why and which checkpoints are kept."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``out_dir/checkpoints`` (``step-N`` holding its state file), oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir()
             if (m := _STEP_DIR.fullmatch(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint whose state file reads back, or None."""
    for path in reversed(checkpoint_dirs(out_dir)):
        try:
            json.loads((path / STATE_FILE).read_text())
        except (OSError, ValueError):  # truncated by hand or by a foreign writer: never resume from it
            continue
        return path
    return None


def save_checkpoint(out_dir: str | Path, step: int, model: nn.Module, tokenizer, optimizer: torch.optim.Optimizer,
                    scheduler, trainer_state: dict[str, Any], keep: int | None = None,
                    protect: Collection[int] = (), model_state: dict[str, torch.Tensor] | None = None,
                    optimizer_state: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoints/step-{step}`` atomically and return its path; then prune (see :func:`prune_checkpoints`).

    ``model_state`` and ``optimizer_state``, when given, are written instead of the model's and optimizer's own
    state dicts (the full state gathered from an FSDP-sharded model). Raises :class:`CheckpointError` when the
    write fails (e.g. a full disk), with nothing half-written left.
    """
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(root)  # left by a killed writer; one writer per run directory, so none is live
    final = root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}-", dir=root))
    try:
        _write(tmp, step, model, tokenizer, optimizer_state or optimizer.state_dict(), scheduler, trainer_state,
               model_state)
        if final.exists():  # a re-run of the same step after a resume: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    except (OSError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(_write_failure(err, final)) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(out_dir, keep, protect)
    return final


def prune_checkpoints(out_dir: str | Path, keep: int | None, protect: Collection[int] = ()) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints and the steps in ``protect``; return those deleted.

    ``keep`` None keeps everything; the newest checkpoint is never deleted (``keep`` below 1 counts as 1).
    """
    if keep is None:
        return []
    older = checkpoint_dirs(out_dir)[:-max(keep, 1)]
    doomed = [p for p in older if _step_of(p) not in set(protect)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    lora: bool) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG from ``path``; return the trainer state it saved."""
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    optimizer_state = _optimizer_state(load_file(path / "optimizer.safetensors"), state["optimizer_groups"])
    if _is_sharded(model):
        from .distributed import load_full_state

        weights = _adapter_weights(path / "model", model) if lora else _read_weights(path / "model")
        load_full_state(model, optimizer, weights, optimizer_state)
    else:
        _load_weights(path / "model", model, lora)
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available() and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"])
    return state


def _write(tmp: Path, step: int, model: nn.Module, tokenizer, optimizer_state: dict[str, Any], scheduler,
           trainer_state: dict[str, Any], model_state: dict[str, torch.Tensor] | None = None) -> None:
    extra = {"state_dict": model_state} if model_state is not None else {}
    model.save_pretrained(tmp / "model", safe_serialization=True, **extra)
    tokenizer.save_pretrained(tmp / "model")
    tensors, groups = _optimizer_tensors(optimizer_state)
    save_file(tensors, tmp / "optimizer.safetensors")
    save_file(_rng_tensors(), tmp / "rng.safetensors")
    state = {**trainer_state, "step": step, "optimizer_groups": groups, "scheduler": scheduler.state_dict()}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=_json_default))  # last: marks it complete
    _fsync_tree(tmp)


def _write_failure(err: OSError | SafetensorError, final: Path) -> str:
    """The message of a failed checkpoint write: why, where, the free space left and what is kept."""
    kept = ", ".join(p.name for p in checkpoint_dirs(final.parent.parent)) or "none"
    try:
        free = _human_bytes(shutil.disk_usage(final.parent).free)
    except OSError:
        free = "unknown"
    why = "disk full" if is_disk_full(err) else str(err)
    return (f"{why} while writing checkpoint {final.name} under {final.parent}: free space {free} "
            f"(checkpoints kept: {kept})")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (an OSError, or safetensors' error wrapping one) says the disk or quota is full."""
    if isinstance(err, OSError):
        return err.errno in DISK_FULL
    match = _OS_ERROR.search(str(err))
    return bool(match) and int(match[1]) in DISK_FULL


def _remove_temporaries(root: Path) -> None:
    for path in root.glob(".step-*"):
        shutil.rmtree(path, ignore_errors=True)


def _step_of(path: Path) -> int:
    return int(_STEP_DIR.fullmatch(path.name)[1])


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _load_weights(model_dir: Path, model: nn.Module, lora: bool) -> None:
    if lora:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(model_dir / "adapter_model.safetensors"))
        if result.unexpected_keys:
            raise ValueError(f"{model_dir}: adapter does not match the model: {result.unexpected_keys[:3]}")
        return
    weights = _read_weights(model_dir)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {n for n, p in model.named_parameters(remove_duplicate=False)} - {
        n for n, p in model.named_parameters()
    }
    if unexpected or set(missing) - tied:
        raise ValueError(f"{model_dir}: weights do not match the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def _read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the Hugging Face directory's safetensors files, by name."""
    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(shard))
    return weights


def _adapter_weights(model_dir: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """A saved LoRA adapter's tensors under the PEFT model's own parameter names (PEFT saves them without the
    adapter's name: ``lora_A.weight`` for ``lora_A.default.weight``)."""
    adapter = getattr(model, "active_adapter", "default")
    names = {name.replace(f".{adapter}", ""): name for name, p in model.named_parameters() if p.requires_grad}
    saved = load_file(model_dir / "adapter_model.safetensors")
    if set(saved) - set(names):
        raise ValueError(f"{model_dir}: adapter does not match the model: {sorted(set(saved) - set(names))[:3]}")
    return {names[key]: tensor for key, tensor in saved.items()}


def _is_sharded(model: nn.Module) -> bool:
    """Whether FSDP sharded ``model``'s parameters (they are DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _optimizer_tensors(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors = {}
    for param_id, param_state in sd["state"].items():
        for key, value in param_state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{param_id}.{key}"] = tensor.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def _optimizer_state(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict[str, Any]:
    """The optimizer ``state_dict()`` that :func:`_optimizer_tensors` flattened into ``tensors`` and ``groups``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = tensor
    return {"state": state, "param_groups": groups}


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
