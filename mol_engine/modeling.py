"""Load a local Hugging Face causal LM for training, and split it into body (hidden states) and head (logits).

Splitting lets the losses form full-vocabulary logits a chunk of positions at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from .spec import JobSpec


class ModelError(ValueError):
    """The base model cannot be used; the message says why."""


def pick_device(spec: JobSpec) -> torch.device:
    """The device named by the spec, or CUDA when available for ``auto``."""
    if spec.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device: '{spec.device}' requested but CUDA is not available")
    return device


def pick_dtype(spec: JobSpec, device: torch.device) -> torch.dtype:
    """The compute dtype: bf16 on CUDA and fp32 on CPU for ``auto``, else as the spec says."""
    if spec.precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[spec.precision]


ATTENTION = {"sdpa": "sdpa", "flash_attention_2": "flash_attention_2", "flex": "flex_attention"}  # spec -> HF
FLASH = ("flash_attention_2",)  # compute in bf16/fp16 only; packed rows go as variable-length sequences


def pick_attention(spec: JobSpec, device: torch.device, dtype: torch.dtype) -> str | None:
    """The ``attn_implementation`` the model is loaded with: the spec's choice, or for ``auto`` flash-attention-2
    on CUDA in bf16/fp16 when the flash-attn package is installed, else FlexAttention on CUDA with document
    packing (a block-sparse mask, where SDPA would build a dense [T, T] one), else None: transformers' default
    (SDPA where the architecture has it, else eager). Raises :class:`ModelError` naming ``attention`` when the
    choice cannot run here (the spec refuses what it can tell without the machine)."""
    if spec.attention == "auto":
        if device.type == "cuda" and dtype != torch.float32 and flash_attention_available():
            return "flash_attention_2"
        return "flex_attention" if device.type == "cuda" and spec.packing == "document" else None
    if spec.attention != "sdpa" and device.type != "cuda":
        raise ModelError(f"attention: {spec.attention} needs a CUDA device (this run is on {device}): choose sdpa "
                         f"or auto")
    if spec.attention == "flash_attention_2" and not flash_attention_available():
        raise ModelError("attention: flash_attention_2 needs the flash-attn package (>= 2.3.3, `pip install "
                         "flash-attn --no-build-isolation`) on this machine: install it, or choose flex, sdpa or auto")
    return ATTENTION[spec.attention]


def flash_attention_available() -> bool:
    """Whether transformers can run flash-attention-2 here (the flash-attn package and a CUDA device)."""
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def use_compile(spec: JobSpec, device: torch.device) -> bool:
    """Whether decoder layers run under ``torch.compile``: ``on``, or ``auto`` on CUDA."""
    return spec.compile == "on" or (spec.compile == "auto" and device.type == "cuda")


def compile_layers(model: nn.Module) -> nn.Module:
    """``model`` with each decoder layer compiled in place (``Module.compile``, as torchtitan compiles each
    TransformerBlock): compilation happens at a layer's first call, one graph shared by the layers of one class.
    Done before FSDP wraps the layers; LoRA adapters and gradient checkpointing may be added before or after."""
    for layer in decoder_layers(model):
        layer.compile()
    return model


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of the causal LM inside ``model`` (the classes it names in ``_no_split_modules``)."""
    names = set(getattr(causal_lm(model), "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"cannot find the decoder layers of {type(causal_lm(model)).__name__} to shard with FSDP "
                         f"or compile")
    return layers


def attention_of(model: nn.Module) -> str | None:
    """The attention implementation ``model`` runs (``sdpa``, ``eager``, ``flex_attention``...); None for a
    module without a transformers config."""
    return getattr(getattr(causal_lm(model), "config", None), "_attn_implementation", None)


@contextlib.contextmanager
def for_generation(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` set up for ``generate`` in the with-block: compiled layers run eagerly (a decode step's shapes
    change at every token: each would be a recompilation) and SDPA stands in for FlexAttention (its decode path is
    compiled per shape too, and its CPU kernel fails to build in torch 2.13) and for flash-attention (which cannot
    run the float32 weights self-sampling generates with, outside autocast). Training's forwards are untouched."""
    config = causal_lm(model).config
    chosen = config._attn_implementation
    if chosen in ("flex_attention", *FLASH):
        config._attn_implementation = "sdpa"
    try:
        with torch.compiler.set_stance("force_eager"):
            yield model
    finally:
        config._attn_implementation = chosen


def load_tokenizer(path: str):
    """The base model's tokenizer with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    _check_model_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if tokenizer.eos_token_id is None:
        raise ModelError(f"base_model: the tokenizer in {path} has no EOS token, needed between documents")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    _check_token_ids(tokenizer, path)
    return tokenizer


def _check_token_ids(tokenizer, path: str) -> None:
    """Fail unless the EOS and pad ids the data uses are rows of the model's embedding (config ``vocab_size``)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False).get_text_config()
    except (OSError, ValueError):
        return  # load_model names what is wrong with the config
    rows = getattr(config, "vocab_size", None)
    for role in ("eos", "pad"):
        token, token_id = getattr(tokenizer, f"{role}_token"), getattr(tokenizer, f"{role}_token_id")
        if rows is not None and not 0 <= token_id < rows:
            raise ModelError(
                f"base_model: the tokenizer in {path} gives its {role} token {token!r} id {token_id}, outside the "
                f"model's embedding ({rows} rows): set {role}_token in tokenizer_config.json to a token the model "
                f"has (e.g. its EOS), or resize the embeddings (model.resize_token_embeddings) and save the model")


def load_model(path: str, device: torch.device, dtype: torch.dtype = torch.float32,
               matmul_dtype: torch.dtype | None = None, attention: str | None = None) -> nn.Module:
    """The causal LM in ``path`` on ``device`` (weights in ``dtype``; with ``matmul_dtype``, its matmul weights in
    that, see :func:`store_matmul_weights`; its ``attn_implementation`` ``attention``, None: transformers'
    default), local files only, no remote code."""
    from transformers import AutoModelForCausalLM

    _check_model_dir(path)
    _check_weights(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, local_files_only=True, trust_remote_code=False, use_safetensors=True,
            attn_implementation=attention,
        )
    except (OSError, ValueError, ImportError) as err:
        field = "attention" if attention and attention in str(err) else "base_model"
        raise ModelError(f"{field}: cannot load a causal LM from {path}"
                         f"{f' with attention {attention}' if attention else ''}: {err}") from None
    model.config.use_cache = False
    if matmul_dtype is not None:
        store_matmul_weights(model, matmul_dtype)  # before the move: the device never holds the wider copy
    model = model.to(device)
    with as_it_computes(device, dtype, matmul_dtype, attention):
        verify_split(model, path)
    return model


def as_it_computes(device: torch.device, dtype: torch.dtype, matmul_dtype: torch.dtype | None,
                   attention: str | None) -> contextlib.AbstractContextManager:
    """The autocast a loaded model computes under from here on (its load check runs in it): ``matmul_dtype``'s with
    bf16 matmul weights, bf16 for float32 weights under a flash kernel (which computes in bf16/fp16 only: the run
    trains such a model under bf16 autocast), else none."""
    checked_in = matmul_dtype or (torch.bfloat16 if attention in FLASH and dtype == torch.float32 else None)
    return torch.autocast(device.type, dtype=checked_in) if checked_in else contextlib.nullcontext()


def store_matmul_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` with each ``nn.Linear``'s weight and bias stored in ``dtype`` (bf16), the rest (embeddings, norms,
    and a head tied to the embedding) left as they are.

    Autocast casts exactly those to ``dtype`` op by op, rounding as ``Tensor.to`` does, so under the same autocast
    this copy computes bit for bit as the fp32 model it was loaded from, in about half the memory of its matmul
    weights: the frozen base of a full fine-tuning run is kept so (its KL to the model is 0 at step 0)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in embeddings:
            module.to(dtype)
    return model


def _check_model_dir(path: str) -> None:
    if not (Path(path) / "config.json").is_file():
        raise ModelError(f"base_model: {path} is not a Hugging Face model directory (no config.json)")


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def _check_weights(path: str) -> None:
    """Fail unless ``path`` holds safetensors weights: pickled PyTorch files are never loaded (they run code)."""
    folder = Path(path)
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(f.name for pattern in PICKLED_WEIGHTS for f in folder.glob(pattern))
    if pickled:
        raise ModelError(
            f"base_model: {path} holds only pickled PyTorch weights ({', '.join(pickled)}), which are never "
            f"loaded because unpickling can run code: convert them to safetensors (load the model once where you "
            f"trust it and call save_pretrained(dir, safe_serialization=True)), or use the model's safetensors "
            f"release")
    raise ModelError(f"base_model: {path} holds no model weights (*.safetensors)")


def add_lora(model: nn.Module, spec: JobSpec) -> nn.Module:
    """``model`` wrapped with fresh LoRA adapters (PEFT); only adapter weights train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.lora.rank, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
        target_modules=spec.lora.target_modules, bias="none", task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise ModelError(f"lora.target_modules: {err}") from None


def causal_lm(model: nn.Module) -> nn.Module:
    """The Hugging Face ``*ForCausalLM`` inside ``model`` (unwrapping PEFT and DDP)."""
    inner = getattr(model, "module", model)  # DDP
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def hidden_states(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                  position_ids: Tensor | None = None) -> Tensor:
    """Last-layer hidden states [B, T, H] of the transformer body (LoRA layers included, when present).

    With ``position_ids`` (document packing) the model gets no attention mask: transformers then reads the
    document boundaries from where positions restart and keeps attention inside each document (under
    flash-attention the engine passes them as variable-length sequences: :func:`varlen_kwargs`). Padding is
    only ever at the right end of a row, so causal attention never lets a real token see it.
    """
    body = _body(causal_lm(model))
    if position_ids is not None:
        varlen = varlen_kwargs(position_ids) if attention_of(model) in FLASH else {}
        return body(input_ids=input_ids, position_ids=position_ids, use_cache=False, **varlen).last_hidden_state
    return body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def varlen_kwargs(position_ids: Tensor) -> dict:
    """flash-attention's variable-length arguments for packed rows [B, T]: each row's start and each restart of
    its positions begins a sequence of the flattened batch. transformers infers them from position ids only for a
    batch of one row; with more it would run each row as one causal sequence, across its documents."""
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten()  # document_positions starts every row at 0
    bounds = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
    longest = int(bounds.diff().max())  # one host read per forward (transformers reads it in every layer)
    return {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}


def _body(lm: nn.Module) -> nn.Module:
    """The transformer body of a ``*ForCausalLM`` (``model``, ``transformer``, ``gpt_neox``...): it returns
    ``last_hidden_state``, final norm applied."""
    body = lm.get_decoder() if hasattr(lm, "get_decoder") else lm
    if body is lm:
        body = getattr(lm, "base_model", lm)
    if body is lm:
        raise ModelError(f"base_model: cannot find the transformer body inside {type(lm).__name__}")
    return body


def logits_head(model: nn.Module) -> LogitsHead:
    """A function hidden [N, H] -> logits [N, V], as the model's own forward computes them (:class:`LogitsHead`)."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    if head is None:
        raise ModelError("base_model: the model has no output embeddings (lm_head)")
    return LogitsHead(head, lm)


class LogitsHead:
    """``lm_head`` and the transforms transformers' forwards apply after it, with the same operations: Granite's
    ``logits / logits_scaling``, Cohere's ``logits * logit_scale`` and Gemma's final soft-capping.
    :func:`verify_split` checks at load that nothing else is missing. :meth:`parameters` are ``lm_head``'s (the
    chunked losses form their gradients themselves: mol_engine.losses).
    """

    def __init__(self, head: nn.Module, lm: nn.Module) -> None:
        config = lm.config
        self.head = head
        self.divide = getattr(config, "logits_scaling", None)  # Granite family
        multiply = getattr(lm, "logit_scale", None)  # Cohere: a number set from the config
        self.multiply = multiply if isinstance(multiply, int | float) else None
        self.softcap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3

    def __call__(self, hidden: Tensor) -> Tensor:
        logits = self.head(hidden)
        if self.divide is not None:
            logits = logits / self.divide
        if self.multiply is not None:
            logits = logits * self.multiply
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def parameters(self) -> Iterator[nn.Parameter]:
        """The head's parameters as the module holds them now (FSDP swaps in gathered ones for a forward)."""
        return self.head.parameters()


# largest |split - forward| logit difference accepted, per unit of the largest |logit| (at least 1)
SPLIT_TOLERANCE = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}
PROBE_TOKENS = 8


def verify_split(model: nn.Module, name: str = "the base model") -> float:
    """The largest logit difference between body + :func:`logits_head` and the model's own forward on a
    probe batch of 2 x 8 tokens (one row right-padded); raises :class:`ModelError` when over tolerance."""
    lm = causal_lm(model)
    device = next(lm.parameters()).device
    rows = lm.get_input_embeddings().num_embeddings
    ids = torch.randint(0, rows, (2, PROBE_TOKENS), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    mask[1, PROBE_TOKENS // 2:] = 0
    was_training = lm.training
    lm.eval()
    try:
        with torch.no_grad():
            split = logits_head(lm)(hidden_states(lm, ids, mask))
            own = lm(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        lm.train(was_training)
    keep = mask.bool()
    split, own = split[keep].float(), own[keep].float()
    if not torch.isfinite(own).all():
        raise ModelError(f"base_model: {name} gives non-finite logits on a probe batch: its weights are broken")
    diff = (split - own).abs().max().item()
    dtype = lm.get_output_embeddings().weight.dtype
    tolerance = SPLIT_TOLERANCE.get(dtype, 3e-2) * max(1.0, own.abs().max().item())
    if not diff <= tolerance:  # NaN fails too
        raise ModelError(
            f"base_model: {name} ({lm.config.model_type}, {type(lm).__name__}) cannot be split into body and "
            f"head: the engine's logits differ from the model's own by up to {diff:.3g} (tolerance "
            f"{tolerance:.2g}), so its forward transforms the logits in a way the engine does not apply. "
            f"Use a model of a tested architecture (see docs/engine.md, Architectures), or teach "
            f"mol_engine.modeling.logits_head this model's transform")
    return diff


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
