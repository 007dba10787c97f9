"""Loading a base model straight into FSDP2 shards, so that no rank ever holds the whole model.

The model is built with its parameters on the meta device (buffers such as rotary ``inv_freq``, which are not in
the checkpoint, are built for real), sharded with ``fully_shard``, given empty local shards, and each rank then
reads only its own rows of every weight from the safetensors files (plain reads: no memory map, so no page of the
file stays counted in the process's memory). FSDP2 shards every parameter on dim 0 as ``torch.chunk`` does: rank
r holds rows ``[r·c, (r+1)·c)`` with ``c = ceil(rows / ranks)``, a contiguous byte range of the file.

A checkpoint whose tensor names are not the model's parameter names (an older layout that transformers renames as
it loads) is not read this way: :func:`sliceable` says so and the caller loads the whole model instead.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from .modeling import (
    ModelError,
    _check_model_dir,
    _check_weights,
    as_it_computes,
    store_matmul_weights,
    verify_split,
)

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


class Stored:
    """One tensor in a safetensors file: where its bytes start, its dtype and shape."""

    def __init__(self, file: Path, start: int, dtype: torch.dtype, shape: list[int]) -> None:
        self.file, self.start, self.dtype, self.shape = file, start, dtype, shape

    def rows(self, first: int, stop: int) -> Tensor:
        """Rows ``[first, stop)`` of dim 0 (the whole tensor for a 0-dim one), read from the file."""
        inner = 1
        for size in self.shape[1:]:
            inner *= size
        shape = [stop - first, *self.shape[1:]] if self.shape else []
        width = torch.empty((), dtype=self.dtype).element_size()
        out = torch.empty(shape, dtype=self.dtype)
        with self.file.open("rb") as f:
            f.seek(self.start + first * inner * width)
            f.readinto(memoryview(out.view(-1).view(torch.uint8).numpy()))
        return out


def stored_tensors(path: str) -> dict[str, Stored]:
    """Every tensor of the model directory's safetensors files, by name (the index's files when there is one)."""
    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    files = sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()}) \
        if index.is_file() else sorted(folder.glob("*.safetensors"))
    found: dict[str, Stored] = {}
    for file in files:
        with file.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, info in header.items():
            if name == "__metadata__" or info["dtype"] not in SAFETENSORS_DTYPES:
                continue
            found[name] = Stored(file, 8 + length + info["data_offsets"][0], SAFETENSORS_DTYPES[info["dtype"]],
                                 info["shape"])
    return found


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (allocated, never touched, then dropped),
    their buffers on the CPU as usual (accelerate's ``init_empty_weights(include_buffers=False)``)."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def meta_model(path: str, dtype: torch.dtype, matmul_dtype: torch.dtype | None = None,
               attention: str | None = None) -> nn.Module:
    """The causal LM of ``path``'s config, parameters on the meta device in ``dtype`` (matmul weights in
    ``matmul_dtype``), tied weights tied, buffers real, ``attn_implementation`` ``attention`` (None: transformers'
    default); with the directory's generation config."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    _check_model_dir(path)
    _check_weights(path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        with parameters_on_meta():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False,
                                                     attn_implementation=attention)
    except (OSError, ValueError) as err:
        raise ModelError(f"base_model: cannot load a causal LM from {path}: {err}") from None
    model.tie_weights()
    with contextlib.suppress(OSError, ValueError):
        model.generation_config = GenerationConfig.from_pretrained(path, local_files_only=True)
    model.config.use_cache = False
    model.eval()  # as from_pretrained returns it
    return store_matmul_weights(model, matmul_dtype) if matmul_dtype is not None else model


def sliceable(model: nn.Module, stored: dict[str, Stored]) -> bool:
    """Whether every parameter of ``model`` (each tied one once) is a tensor of that name and shape in the files."""
    return all(name in stored and list(p.shape) == stored[name].shape for name, p in model.named_parameters())


def materialize(model: nn.Module, device: torch.device, stored: dict[str, Stored]) -> None:
    """Give the sharded meta ``model`` real local shards on ``device`` read from ``stored`` (each rank its rows),
    and its buffers the values they were built with (or the files', for a buffer the checkpoint holds)."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers() if b.device.type != "meta"}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            value = stored[name].rows(0, stored[name].shape[0]) if name in stored else buffers.get(name)
            if value is None:
                raise ModelError(f"base_model: the buffer {name} has no value to load (built on the meta device)")
            buffer.copy_(value)
        for name, param in model.named_parameters():
            local, (first, stop) = local_rows(param)
            local.copy_(stored[name].rows(first, stop))


def local_rows(param: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """This rank's local tensor of ``param`` and the rows ``[first, stop)`` of the whole one it holds."""
    rows = param.shape[0] if param.dim() else 0
    if not hasattr(param, "to_local"):
        return param, (0, rows)
    local = param.to_local()
    mesh = param.device_mesh
    chunk = -(-rows // mesh.size())
    first = min(mesh.get_local_rank() * chunk, rows)
    stop = min(first + chunk, rows)
    if local.shape[0] != stop - first:  # FSDP2 shards as torch.chunk does; anything else would load wrong rows
        raise RuntimeError(f"unexpected shard of {tuple(param.shape)}: {tuple(local.shape)} on rank "
                           f"{mesh.get_local_rank()}")
    return local, (first, stop)


def load_sharded(path: str, device: torch.device, dtype: torch.dtype, shard: Callable[[nn.Module], nn.Module],
                 matmul_dtype: torch.dtype | None = None, verify: bool = True,
                 attention: str | None = None) -> tuple[nn.Module, nn.Module] | None:
    """(model, what ``shard`` returned): the causal LM in ``path`` built on the meta device, sharded by ``shard``
    (which applies ``fully_shard``), each rank's shards read from the files, on ``device``; with ``verify``, checked
    as ``modeling.load_model`` checks a model (:func:`verify_split`, on every rank: its forward is a collective).
    None when the files' names do not match the model's parameters (:func:`sliceable`): load the whole model then."""
    from .distributed import gathered

    model = meta_model(path, dtype, matmul_dtype, attention)
    stored = stored_tensors(path)
    if not sliceable(model, stored):
        return None
    root = shard(model)
    materialize(model, device, stored)
    if not verify:
        return model, root
    with as_it_computes(device, dtype, matmul_dtype, attention), gathered(root):
        verify_split(model, path)
    return model, root
