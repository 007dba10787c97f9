"""Atomic training checkpoints: safetensors and JSON, or, under FSDP, torch.distributed.checkpoint shards.

Layout of ``checkpoints/step-N/`` with one process or DDP (written by rank 0):
    model/                   Hugging Face directory (full weights + tokenizer) or PEFT adapter (+ tokenizer), and
                             its model card, README.md, from ``trainer_state["model_card"]`` (mol_engine/model_card.py)
    optimizer.safetensors    optimizer state tensors;   trainer_state.json: step, optimizer groups,
    rng.safetensors          torch RNG states;          scheduler, data position, spec
Under FSDP (:func:`save_sharded_checkpoint`, every rank writes its own shards, nothing is gathered):
    dcp/                     DCP checkpoint: trainable weights and optimizer tensors by parameter name, one
                             ``__R_0.distcp`` file per rank R and a ``.metadata`` index
    model/                   config (or adapter_config) + tokenizer + card, no weights: ``mol export`` gathers them
    rng/rank-R.safetensors   each rank's RNG states;  trainer_state.json as above (optimizer groups by name)
A checkpoint is written to a temporary sibling (``.step-N-xxxx``) and renamed into place (by rank 0, once every
rank has written its part), so ``step-N`` exists only complete; only then are older ones pruned. A write that fails
(a full disk) removes its temporary directory and raises :class:`CheckpointError` (on every rank), leaving the
earlier checkpoints as they were. Nothing is unpickled on resume but DCP's ``.metadata`` index (torch's own
format), read with an unpickler that admits DCP's metadata classes alone (:class:`MetadataReader`). Which
directories are checkpoints, and of which layout, :mod:`mol_engine.run_dir` says (without torch).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from .model_card import write_model_card
from .run_dir import RNG_DIR, SHARDS, STATE_FILE, RunDir, is_sharded_checkpoint, step_of

_OS_ERROR = re.compile(r"os error (\d+)")  # how safetensors' Rust writer reports an OSError


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the message says why and which checkpoints are kept."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def save_checkpoint(out_dir: str | Path, step: int, model: nn.Module, tokenizer, optimizer: torch.optim.Optimizer,
                    scheduler, trainer_state: dict[str, Any], keep: int | None = None,
                    protect: Collection[int] = ()) -> Path:
    """Write ``checkpoints/step-N`` (N = ``step``) atomically and return its path; then prune (see
    :func:`prune_checkpoints`).

    Raises :class:`CheckpointError` when the write fails (e.g. a full disk), with nothing half-written left.
    """
    run = RunDir(out_dir)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(run)  # left by a killed writer; one writer per run directory, so none is live
    final = run.checkpoint(step)
    tmp = Path(tempfile.mkdtemp(prefix=run.scratch_prefix(step), dir=run.checkpoints))
    try:
        _write(tmp, step, model, tokenizer, optimizer.state_dict(), scheduler, trainer_state)
        _move_into_place(tmp, final)
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
    older = RunDir(out_dir).checkpoint_dirs()[:-max(keep, 1)]
    doomed = [p for p in older if step_of(p) not in set(protect)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    lora: bool) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG from ``path``, of either layout and written by any number of ranks
    (``model`` FSDP-sharded or not); return the trainer state it saved."""
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    if is_sharded_checkpoint(path):
        _load_shards(path, model, optimizer, state["optimizer_groups"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng(load_file(_rng_file(path)))
        return state
    optimizer_state = _optimizer_state(load_file(path / "optimizer.safetensors"), state["optimizer_groups"])
    if _has_sharded_parameters(model):
        from .distributed import load_full_state

        weights = _adapter_weights(path / "model", model) if lora else _read_weights(path / "model")
        load_full_state(model, optimizer, weights, optimizer_state)
    else:
        _load_weights(path / "model", model, lora)
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(state["scheduler"])
    _set_rng(load_file(path / "rng.safetensors"))
    return state


def _set_rng(rng: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available() and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"])


def save_sharded_checkpoint(out_dir: str | Path, step: int, model: nn.Module, tokenizer,
                            optimizer: torch.optim.Optimizer, scheduler, trainer_state: dict[str, Any],
                            keep: int | None = None, protect: Collection[int] = ()) -> Path:
    """Write ``checkpoints/step-N`` (N = ``step``) of an FSDP run without gathering: every rank calls this at once.

    Each rank writes its shards of the trainable weights and the optimizer state (``torch.distributed.checkpoint``,
    in parallel) and its RNG states into a temporary sibling; once all are done, rank 0 adds the model's config
    (or adapter config) and tokenizer, the trainer state, and renames it into place, then prunes as
    :func:`save_checkpoint` does. A failed write on any rank raises :class:`CheckpointError` on every rank, with
    nothing half-written left. Returns the checkpoint's path.
    """
    from .distributed import sharded_state

    rank = dist.get_rank()
    run = RunDir(out_dir)
    final, tmp = run.checkpoint(step), run.checkpoints / f"{run.scratch_prefix(step)}shards"
    state = sharded_state(model, optimizer)
    groups = state["optimizer"].pop("param_groups")  # JSON, in the trainer state: DCP would pickle them
    if hasattr(model, "peft_config"):  # the adapter's name is in its parameters' names, not in the files PEFT writes
        trainer_state = trainer_state | {"adapter_name": model.active_adapter}

    def prepare() -> None:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        _remove_temporaries(run)  # left by a killed writer; one writer per run directory, so none is live
        (tmp / RNG_DIR).mkdir(parents=True)

    def write_shards() -> None:
        dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp / SHARDS))
        rng_file = tmp / RNG_DIR / f"rank-{rank}.safetensors"
        save_file(_rng_tensors(), rng_file)
        _fsync(rng_file)

    def complete() -> None:
        _write_description(tmp / "model", model, tokenizer)
        write_model_card(tmp / "model", trainer_state.get("model_card"), _kind(model))
        _write_state(tmp, step, groups, scheduler, trainer_state)
        _move_into_place(tmp, final)
        prune_checkpoints(out_dir, keep, protect)

    _on_every_rank(prepare if rank == 0 else None, final, tmp)
    _on_every_rank(write_shards, final, tmp)
    _on_every_rank(complete if rank == 0 else None, final, tmp)
    return final


class MetadataReader(dcp.FileSystemReader):
    """DCP's file reader, its ``.metadata`` index unpickled admitting only DCP's metadata classes and the torch and
    builtin types they hold (torch reads the shards themselves with ``torch.load(weights_only=True)``)."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        with open(Path(self.path) / ".metadata", "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _MetadataUnpickler(pickle.Unpickler):
    """Admits what DCP's ``Metadata`` holds: its own classes, tensor sizes, dtypes and layouts, the checkpoint's
    path; any other global (a callable a crafted file would smuggle in) fails the read. Only exact (module, name)
    pairs pass: pickle resolves a dotted name attribute by attribute (``metadata`` + ``os.system`` is ``os.system``,
    since the metadata module imports ``os``), so no name is ever looked up past the pair itself."""

    ALLOWED = frozenset({
        *(("torch.distributed.checkpoint.metadata", name) for name in (
            "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
            "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
        ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"), ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
    })

    def find_class(self, module: str, name: str) -> Any:
        """The admitted global ``module.name``; else UnpicklingError naming it."""
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and "." not in name and isinstance(
                value := getattr(torch, name, None), torch.dtype | torch.memory_format):
            return value
        raise pickle.UnpicklingError(f"DCP metadata names {module}.{name}, which a checkpoint index never holds")


def _load_shards(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, groups: list[dict]) -> None:
    """Fill the model's and optimizer's state (this rank's shards, or whole tensors without FSDP) from the DCP
    checkpoint in ``path``, whatever number of ranks wrote it, and load it."""
    from .distributed import load_sharded_state, sharded_state

    state = sharded_state(model, optimizer)  # this rank's tensors, the shapes to read into
    state["optimizer"].pop("param_groups")
    _read_shards(state, path / SHARDS)
    state["optimizer"]["param_groups"] = groups
    load_sharded_state(model, optimizer, state)


def read_sharded_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The whole trainable weights of an FSDP checkpoint by parameter name (every parameter with LoRA's adapter
    alone), read from every rank's shards in this one process, without a process group."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    shards = Path(path) / SHARDS
    index = MetadataReader(shards).read_metadata().state_dict_metadata
    weights = {key.removeprefix("model."): torch.empty(meta.size, dtype=meta.properties.dtype)
               for key, meta in index.items() if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)}
    _read_shards({"model": weights}, shards)
    return weights


def _read_shards(state: dict[str, Any], shards: Path) -> None:
    """Fill ``state``'s tensors in place from the DCP checkpoint ``shards``: collectively under a process group,
    else in this one process (DCP then warns that it assumes so: that is the intent)."""
    single = not dist.is_initialized()
    with warnings.catch_warnings():
        if single:
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(state, storage_reader=MetadataReader(shards), no_dist=single)


def _rng_file(path: Path) -> Path:
    """This rank's RNG file in an FSDP checkpoint, or rank 0's when it was written by fewer ranks."""
    own = path / RNG_DIR / f"rank-{dist.get_rank() if dist.is_initialized() else 0}.safetensors"
    return own if own.is_file() else path / RNG_DIR / "rank-0.safetensors"


def _write_description(model_dir: Path, model: nn.Module, tokenizer) -> None:
    """What keeps a sharded checkpoint self-describing: the model's config (or the LoRA adapter's) and tokenizer."""
    model_dir.mkdir(parents=True)
    if hasattr(model, "peft_config"):
        model.peft_config[model.active_adapter].save_pretrained(model_dir)
    else:
        model.config.save_pretrained(model_dir)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)


def _kind(model: nn.Module) -> str:
    """What a checkpoint's ``model/`` holds: a LoRA ``adapter`` or ``full`` weights."""
    return "adapter" if hasattr(model, "peft_config") else "full"


def sharded_weight_bytes(path: str | Path, aliases: Collection[str] = ()) -> int:
    """The bytes of the model weights in an FSDP checkpoint's shards (not its optimizer state), from their index,
    leaving out the parameter names in ``aliases`` (a tied head, saved once): the tensors an export of them holds."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    index = MetadataReader(Path(path) / SHARDS).read_metadata().state_dict_metadata
    return sum(meta.size.numel() * meta.properties.dtype.itemsize for key, meta in index.items()
               if key.startswith("model.") and key.removeprefix("model.") not in aliases
               and isinstance(meta, TensorStorageMetadata))


def _on_every_rank(action: Callable[[], None] | None, final: Path, tmp: Path) -> None:
    """Run ``action`` on this rank (None: nothing), then learn from all ranks whether it failed on any: then rank 0
    removes ``tmp`` and every rank raises :class:`CheckpointError`, a failing rank with its own reason."""
    error: BaseException | None = None
    try:
        if action is not None:
            action()
    except (Exception, CheckpointException) as err:  # DCP's exception is a BaseException
        error = err
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    failed = torch.tensor([dist.get_rank() + 1 if error is not None else 0], device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if not failed.item():
        return
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    if error is None:
        raise CheckpointError(f"rank {int(failed.item()) - 1} could not write checkpoint {final.name} "
                              f"(its log says why)")
    cause = _first_cause(error)
    if isinstance(cause, OSError | SafetensorError):
        raise CheckpointError(_write_failure(cause, final)) from error
    raise error


def _first_cause(err: BaseException) -> BaseException:
    """The exception behind DCP's CheckpointException (which collects every rank's), else ``err`` itself."""
    while isinstance(err, CheckpointException) and err.failures:
        err = next(iter(err.failures.values()))[0]
    return err


def _write(tmp: Path, step: int, model: nn.Module, tokenizer, optimizer_state: dict[str, Any], scheduler,
           trainer_state: dict[str, Any]) -> None:
    model.save_pretrained(tmp / "model", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "model")
    write_model_card(tmp / "model", trainer_state.get("model_card"), _kind(model))
    tensors, groups = _optimizer_tensors(optimizer_state)
    save_file(tensors, tmp / "optimizer.safetensors")
    save_file(_rng_tensors(), tmp / "rng.safetensors")
    _write_state(tmp, step, groups, scheduler, trainer_state)


def _write_state(tmp: Path, step: int, groups: list[dict], scheduler, trainer_state: dict[str, Any]) -> None:
    """The trainer state file, written last (it marks the checkpoint complete), then every file synced."""
    state = {**trainer_state, "step": step, "optimizer_groups": groups, "scheduler": scheduler.state_dict()}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=_json_default))
    _fsync_tree(tmp)


def _move_into_place(tmp: Path, final: Path) -> None:
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)


def _write_failure(err: OSError | SafetensorError, final: Path) -> str:
    """The message of a failed checkpoint write: why, where, the free space left and what is kept."""
    kept = ", ".join(p.name for p in RunDir.holding(final).checkpoint_dirs()) or "none"
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


def _remove_temporaries(run: RunDir) -> None:
    for path in run.scratch_dirs():
        shutil.rmtree(path, ignore_errors=True)


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


def _has_sharded_parameters(model: nn.Module) -> bool:
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
            _fsync(path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
