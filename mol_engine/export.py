"""Checkpoint -> Hugging Face directory that ``AutoModelForCausalLM.from_pretrained`` loads.

Full fine-tuning checkpoints already hold a complete model directory. LoRA checkpoints hold a PEFT
adapter: exported as is (small; loading it needs the base model) or merged into the base weights.
A checkpoint written under FSDP holds its weights as DCP shards (``run_dir.is_sharded_checkpoint``):
exporting it gathers them in this one process into the same directory (full weights, adapter, or merged).
Every export carries the checkpoint's model card (README.md) rendered for what it holds (mol_engine/model_card.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .model_card import card_from_state, write_model_card
from .run_dir import STATE_FILE, is_sharded_checkpoint


class ExportError(ValueError):
    """The checkpoint cannot be exported as asked."""


def model_dir(checkpoint: str | Path) -> Path:
    """The model directory inside a checkpoint (or the argument itself when it is one)."""
    path = Path(checkpoint)
    inner = path / "model"
    found = inner if inner.is_dir() else path
    if not ((found / "config.json").is_file() or (found / "adapter_config.json").is_file()):
        raise ExportError(f"{checkpoint}: not a checkpoint (no model/config.json or adapter_config.json)")
    return found


def is_adapter(checkpoint: str | Path) -> bool:
    """Whether the checkpoint holds a LoRA adapter rather than full weights."""
    return (model_dir(checkpoint) / "adapter_config.json").is_file()


def export_checkpoint(checkpoint: str | Path, out: str | Path, merged: bool = False,
                      base_model: str | None = None) -> Path:
    """Write a loadable HF directory to ``out`` and return it: full weights, or (LoRA) adapter/merged.

    ``base_model`` overrides the base directory recorded in a LoRA adapter (needed to merge).
    """
    source, out = model_dir(checkpoint), Path(out)
    with written_whole(out) as tmp:
        if is_sharded_checkpoint(checkpoint) and is_adapter(source) and merged:
            with tempfile.TemporaryDirectory(prefix=f".{out.name}-adapter-", dir=out.parent) as adapter:
                gather_shards(checkpoint, Path(adapter))
                _merge(Path(adapter), tmp, base_model)
        elif is_sharded_checkpoint(checkpoint):
            gather_shards(checkpoint, tmp)
        elif is_adapter(source) and merged:
            _merge(source, tmp, base_model)
        else:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        if base_model and is_adapter(tmp):
            _set_adapter_base(tmp, base_model)
        write_model_card(tmp, checkpoint_card(checkpoint), export_kind(checkpoint, merged))
    return out


@contextlib.contextmanager
def written_whole(out: Path) -> Iterator[Path]:
    """A scratch sibling of ``out`` to write an export into, renamed to ``out`` when the block ends well and removed
    when it fails, so ``out`` exists only complete. Refuses an ``out`` that holds anything."""
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out}: already exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_kind(checkpoint: str | Path, merged: bool) -> str:
    """What an export (or download) of ``checkpoint`` holds: ``full`` weights, a LoRA ``adapter``, or the adapter
    ``merged`` into the base."""
    if not is_adapter(checkpoint):
        return "full"
    return "merged" if merged else "adapter"


def checkpoint_card(checkpoint: str | Path) -> dict | None:
    """The model card of a checkpoint directory (see :func:`model_card.card_from_state`), None for a bare model
    directory, which has no trainer state."""
    try:
        state = json.loads((Path(checkpoint) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return card_from_state(state)


def gather_shards(checkpoint: str | Path, dest: Path) -> Path:
    """The Hugging Face directory of an FSDP checkpoint written to ``dest``: its config and tokenizer with the
    weights gathered from every rank's shards (full weights in safetensors, or the PEFT adapter file)."""
    from safetensors.torch import save_file

    from .checkpoint import read_sharded_weights

    description = model_dir(checkpoint)
    weights = read_sharded_weights(checkpoint)
    shutil.copytree(description, dest, dirs_exist_ok=True)
    if is_adapter(description):
        adapter = json.loads((Path(checkpoint) / STATE_FILE).read_text()).get("adapter_name", "default")
        tensors = {name.replace(f".{adapter}.", "."): tensor for name, tensor in weights.items()}  # PEFT's file names
        save_file(tensors, dest / "adapter_model.safetensors", metadata={"format": "pt"})
        return dest
    from transformers import AutoConfig

    shell = _shell(AutoConfig.from_pretrained(description))  # the model's own saving rules, no weights held
    aliases = tied_aliases(description)
    kept = {name: tensor for name, tensor in weights.items() if name not in aliases}  # a tied head once, not twice
    shell.save_pretrained(dest, state_dict=kept, safe_serialization=True)
    return dest


def _shell(config):
    """The model ``config`` describes, on the meta device (no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def tied_aliases(description: str | Path) -> frozenset[str]:
    """The parameter names of a model directory's config that alias another's (a tied head), which a saved model
    holds once; none for an adapter (its config says nothing of the base's ties)."""
    description = Path(description)
    if (description / "adapter_config.json").is_file():
        return frozenset()
    return _aliases((description / "config.json").read_text())


@functools.lru_cache(maxsize=16)
def _aliases(config: str) -> frozenset[str]:
    """The tied aliases of the model a ``config.json`` text describes: built once per distinct config, however
    many checkpoints share it (a meta model of a large config takes a while)."""
    from transformers import AutoConfig

    shell = _shell(AutoConfig.for_model(**json.loads(config)))
    every, distinct = dict(shell.named_parameters(remove_duplicate=False)), dict(shell.named_parameters())
    return frozenset(every.keys() - distinct.keys())


def _adapter_base(source: Path, base_model: str | None) -> str:
    base = base_model or json.loads((source / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base or not (Path(base) / "config.json").is_file():
        raise ExportError(f"{source}: base model '{base}' not found locally; pass its directory to merge")
    return base


def _merge(source: Path, dest: Path, base_model: str | None) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(_adapter_base(source, base_model), local_files_only=True)
    merged = PeftModel.from_pretrained(base, source, local_files_only=True).merge_and_unload()
    merged.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(dest)


def _set_adapter_base(directory: Path, base_model: str) -> None:
    config_path = directory / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base_model)
    config_path.write_text(json.dumps(config, indent=2))
