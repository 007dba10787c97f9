"""Weight interpolation (WiSE-FT): the models between the base and a checkpoint, evaluated and exported.

For full weights θ(α) = (1−α)·θ_base + α·θ_ckpt, tensor by tensor in fp32, cast back to the checkpoint's dtype.
For a LoRA adapter θ(α) = θ_base + α·ΔW: the adapter's ``lora_B`` weights times α (ΔW = B·A·scaling is linear in
B), so α = 0 is the base exactly and α = 1 the adapter as trained. Each θ(α) is evaluated by training's own
held-out evaluation (``train._evaluate`` at step 0: the same blocks, reference and figures), so its rows sit on
the same axes as the run's evaluations.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .export import ExportError, checkpoint_card, is_adapter, model_dir, written_whole
from .model_card import CARD_FILE, write_model_card
from .run_dir import STATE_FILE, RunDir, is_sharded_checkpoint
from .spec import JobSpec

if TYPE_CHECKING:
    from torch import Tensor, nn

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_ALPHAS = 11
LORA_B_PARTS = ("lora_B", "lora_embedding_B")  # PEFT's up-projections: the factor ΔW is linear in


class InterpolationError(ValueError):
    """The interpolation cannot be done as asked; the message says why."""


def check_alphas(alphas: Sequence[float]) -> list[float]:
    """``alphas`` as floats, each within [0, 1], at least one and at most :data:`MAX_ALPHAS`."""
    values = [float(a) for a in alphas]
    if not values or len(values) > MAX_ALPHAS:
        raise InterpolationError(f"alphas: give 1 to {MAX_ALPHAS} values, not {len(values)}")
    outside = [a for a in values if not 0.0 <= a <= 1.0]  # NaN fails too
    if outside:
        raise InterpolationError(f"alphas: each α must be within [0, 1]; {outside[0]} is not")
    return values


def interpolated_state(base_sd: Mapping[str, Tensor], ckpt_sd: Mapping[str, Tensor],
                       alpha: float) -> dict[str, Tensor]:
    """θ(α) = (1−α)·θ_base + α·θ_ckpt for every tensor, computed in fp32 and cast to the checkpoint's dtype.

    Exact at the ends (α = 0 gives the base, α = 1 the checkpoint). The two must hold the same names and shapes.
    """
    check_alphas([alpha])
    mismatch = _first_mismatch(base_sd, ckpt_sd)
    if mismatch:
        raise InterpolationError(f"the checkpoint does not match the base: {mismatch}")
    out = {}
    for name, ckpt in ckpt_sd.items():
        if not ckpt.is_floating_point():  # an integer buffer (position ids) is not interpolated
            out[name] = ckpt.clone()
            continue
        mixed = (1.0 - alpha) * base_sd[name].float() + alpha * ckpt.float()
        out[name] = mixed.to(ckpt.dtype)
    return out


def _first_mismatch(base_sd: Mapping[str, Tensor], ckpt_sd: Mapping[str, Tensor]) -> str | None:
    """The first name only one side holds, or whose shapes differ, said in words; None when they match."""
    for name in sorted(set(base_sd) | set(ckpt_sd)):
        if name not in ckpt_sd:
            return f"'{name}' is in the base, not in the checkpoint"
        if name not in base_sd:
            return f"'{name}' is in the checkpoint, not in the base"
        if base_sd[name].shape != ckpt_sd[name].shape:
            return f"'{name}' has shape {tuple(base_sd[name].shape)} in the base, {tuple(ckpt_sd[name].shape)} " \
                   f"in the checkpoint"
    return None


def scaled_adapter(adapter_sd: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """A LoRA adapter's tensors with its ``lora_B`` weights times α (θ_base + α·ΔW); the others as they are."""
    check_alphas([alpha])
    return {name: tensor * alpha if any(f".{part}." in name for part in LORA_B_PARTS) else tensor.clone()
            for name, tensor in adapter_sd.items()}


def trainer_state(checkpoint: str | Path) -> dict:
    """The trainer state a checkpoint was written with (spec, evaluations, base model)."""
    try:
        return json.loads((Path(checkpoint) / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise InterpolationError(f"{checkpoint}: not a training checkpoint (no readable {STATE_FILE}): {err}") from None


def resolve_checkpoint(given: str | Path) -> Path:
    """The checkpoint ``given`` names: a checkpoint directory, ``RUN/checkpoints/best``, or a run directory (its
    best checkpoint within the budget, else its newest)."""
    from .budget import best_checkpoint_dir, checkpoint_path

    path = checkpoint_path(given)
    if (path / STATE_FILE).is_file():
        return path
    found = best_checkpoint_dir(path) or RunDir(path).latest_checkpoint()
    if found is None:
        raise InterpolationError(f"{given}: neither a checkpoint nor a run directory holding one")
    return found


def checkpoint_spec(checkpoint: str | Path) -> JobSpec:
    """The spec the checkpoint's run trained with (its paths local, as it ran)."""
    return JobSpec.model_validate(trainer_state(checkpoint)["spec"])


def checkpoint_weights(checkpoint: str | Path) -> dict[str, Tensor]:
    """The checkpoint's weights by the names its own files use: full weights, or the adapter's (PEFT's names, the
    adapter name left out); an FSDP checkpoint's shards gathered."""
    from safetensors.torch import load_file

    from .checkpoint import read_sharded_weights

    if is_sharded_checkpoint(checkpoint):
        weights = read_sharded_weights(checkpoint)
        if is_adapter(checkpoint):
            adapter = trainer_state(checkpoint).get("adapter_name", "default")
            weights = {name.replace(f".{adapter}.", "."): tensor for name, tensor in weights.items()}
        return weights
    source = model_dir(checkpoint)
    files = [source / "adapter_model.safetensors"] if is_adapter(checkpoint) else sorted(source.glob("*.safetensors"))
    weights: dict[str, Tensor] = {}
    for path in files:
        weights.update(load_file(path))
    return weights


def full_checkpoint_state(model: nn.Module, weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``model``'s state dict with the checkpoint's ``weights`` in place of its own (a tied head, saved once, follows
    the weight it aliases); ``model`` is left as it was."""
    own = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    aliases = _tied_aliases(model)
    unknown = sorted(set(weights) - set(own))
    missing = sorted(set(own) - set(weights) - aliases)
    if unknown or missing:
        first = f"'{unknown[0]}' is in the checkpoint, not in the base" if unknown else \
            f"'{missing[0]}' is in the base, not in the checkpoint"
        raise InterpolationError(f"the checkpoint does not match the base: {first}")
    model.load_state_dict(weights, strict=False)
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    model.load_state_dict(own)
    return state


def _run_of(checkpoint: str | Path) -> RunDir:
    """The run directory holding ``checkpoint`` (InterpolationError when it is in none)."""
    run = RunDir.holding(Path(checkpoint).resolve())
    if run is None:
        raise InterpolationError(f"{checkpoint}: not in a run directory's checkpoints folder (RUN/checkpoints/step-N)")
    return run


def _tied_aliases(model: nn.Module) -> set[str]:
    every = dict(model.named_parameters(remove_duplicate=False))
    return set(every) - set(dict(model.named_parameters()))


def evaluate_interpolation(spec: JobSpec, checkpoint: str | Path,
                           alphas: Sequence[float] = DEFAULT_ALPHAS) -> list[dict[str, float]]:
    """One row per α, in the order given: ``{"alpha", "domain_ppl", "general_ppl", "general_kl",
    "qa_exact_match"}`` (the figures the job's evaluation has), from training's own held-out evaluation of θ(α).

    ``spec`` is the run's (paths local); its run directory (``RUN`` of ``RUN/checkpoints/step-N``) is where a
    self-sampled general corpus is read back from.
    """
    from .callbacks import Callback
    from .train import _evaluate, setup_run  # training's evaluation itself, so the figures are comparable

    alphas = check_alphas(alphas)
    weights = checkpoint_weights(checkpoint)
    lora = is_adapter(checkpoint)
    if lora != (spec.finetune == "lora"):
        raise InterpolationError(f"{checkpoint}: holds {'an adapter' if lora else 'full weights'}, but the spec "
                                 f"says finetune: {spec.finetune}")
    # the exact reference scores the general text either way; a cached top-k is for training alone
    run = setup_run(spec.model_copy(update={"reference": "exact"}), _run_of(checkpoint).path)
    run.prompts = []  # no sample completions: only the figures
    set_weights = _adapter_setter(run.model, weights) if lora else _full_setter(run.model, weights)
    rows = []
    for alpha in alphas:
        set_weights(alpha)
        metrics = _evaluate(run, 0, Callback())
        rows.append({"alpha": alpha} | {name.removeprefix("eval/"): value for name, value in metrics.items()})
    return rows


def _full_setter(model: nn.Module, weights: Mapping[str, Tensor]):
    base_sd = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    ckpt_sd = full_checkpoint_state(model, weights)

    def set_weights(alpha: float) -> None:
        model.load_state_dict(interpolated_state(base_sd, ckpt_sd, alpha))

    return set_weights


def _adapter_setter(model: nn.Module, weights: Mapping[str, Tensor]):
    from peft import set_peft_model_state_dict

    def set_weights(alpha: float) -> None:
        result = set_peft_model_state_dict(model, scaled_adapter(weights, alpha))
        if result.unexpected_keys:
            raise InterpolationError(f"the adapter does not match the model: {result.unexpected_keys[:3]}")

    return set_weights


def export_interpolated(checkpoint: str | Path, alpha: float, out: str | Path, base_model: str | None = None) -> Path:
    """Write θ(α) of ``checkpoint`` to ``out`` as a Hugging Face directory (full weights; for LoRA the adapter
    merged at α) with the checkpoint's model card and a line saying which α it is; return ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_alphas([alpha])
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out}: already exists and is not empty")
    base_path = base_model or trainer_state(checkpoint).get("base_model")
    if not base_path or not (Path(base_path) / "config.json").is_file():
        raise ExportError(f"{checkpoint}: base model '{base_path}' not found locally; pass its directory")
    weights = checkpoint_weights(checkpoint)
    lora = is_adapter(checkpoint)
    # full weights: the base in the checkpoint's dtype (full fine-tuning keeps fp32 masters); LoRA: as it is stored
    dtype = "auto" if lora else next(t.dtype for t in weights.values() if t.is_floating_point())
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, local_files_only=True, use_safetensors=True)
    if lora:
        model = _merged_at(model, model_dir(checkpoint), weights, alpha)
    else:
        ckpt_sd = full_checkpoint_state(model, weights)
        model.load_state_dict(interpolated_state(model.state_dict(), ckpt_sd, alpha))
    with written_whole(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(model_dir(checkpoint), local_files_only=True).save_pretrained(tmp)
        write_model_card(tmp, checkpoint_card(checkpoint), "merged" if lora else "full")
        _note_alpha(tmp / CARD_FILE, Path(checkpoint).name, alpha, lora)
    return out


def _merged_at(base: nn.Module, adapter_dir: Path, weights: Mapping[str, Tensor], alpha: float) -> nn.Module:
    """``base`` with the adapter in ``adapter_dir`` merged into it at α."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    model = get_peft_model(base, LoraConfig.from_pretrained(adapter_dir))
    result = set_peft_model_state_dict(model, scaled_adapter(weights, alpha))
    if result.unexpected_keys:
        raise InterpolationError(f"the adapter does not match the base: {result.unexpected_keys[:3]}")
    return model.merge_and_unload()


def _note_alpha(card: Path, checkpoint_name: str, alpha: float, lora: bool) -> None:
    """Add to the card (if any) what the weights are: θ(α) between the base and the checkpoint."""
    if not card.is_file():
        return
    formula = "θ_base + α·ΔW (the LoRA adapter scaled by α, merged)" if lora else "(1−α)·θ_base + α·θ_checkpoint"
    card.write_text(card.read_text() + f"\n## Weight interpolation\n\nThese weights are θ(α) = {formula} with "
                    f"α = {alpha:g} and checkpoint {checkpoint_name} (WiSE-FT). The evaluations above are the "
                    f"checkpoint's (α = 1) and the base's (α = 0).\n")


def interpolation_table(rows: Sequence[Mapping[str, float]]) -> str:
    """The rows as a text table, one line per α, the columns the figures they hold."""
    names = [name for name in rows[0] if name != "alpha"] if rows else []
    lines = [f"  {'alpha':>6} " + " ".join(f"{name:>16}" for name in names)]
    for row in rows:
        lines.append(f"  {row['alpha']:>6.3g} " + " ".join(f"{row[name]:>16.6g}" for name in names))
    return "\n".join(lines)
