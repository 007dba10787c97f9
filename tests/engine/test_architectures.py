"""Every common architecture: the body/head split reproduces the model's logits, and MoL trains it.

Tiny random models (hidden 32, 2 layers, a ~300-token BPE vocabulary), each saved once per session.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mol_engine.modeling import ModelError, hidden_states, load_model, load_tokenizer, logits_head, verify_split
from mol_engine.train import train

LLAMA_LIKE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=128)
# model_type -> config fields beyond the vocabulary and special tokens (post-head transforms set off their default)
ARCHITECTURES = {
    "llama": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    "qwen3": LLAMA_LIKE | {"head_dim": 16},
    "mistral": LLAMA_LIKE,
    "gemma2": LLAMA_LIKE | {"head_dim": 16, "final_logit_softcapping": 0.5},
    "gemma3_text": LLAMA_LIKE | {"head_dim": 16, "final_logit_softcapping": 0.5},
    "phi3": LLAMA_LIKE,
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, n_positions=128),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=128),
    "granite": LLAMA_LIKE | {"logits_scaling": 4.0},
    "cohere": LLAMA_LIKE | {"logit_scale": 2.0},
    "olmo2": LLAMA_LIKE,
}


@pytest.fixture(scope="session")
def arch_tokenizer(tiny_model_dir):
    """The suite's byte-level BPE tokenizer (320 tokens), so every model reuses the corpora's token stores."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def arch_dir(tmp_path_factory, arch_tokenizer):
    """model_type -> the directory of that architecture's tiny random model, saved on first use."""
    root, saved = tmp_path_factory.mktemp("architectures"), {}

    def get(model_type: str) -> Path:
        if model_type not in saved:
            saved[model_type] = save_tiny(root / model_type, model_type, arch_tokenizer)
        return saved[model_type]

    return get


def save_tiny(path: Path, model_type: str, tokenizer, **overrides) -> Path:
    """``path``, now holding a random ``model_type`` causal LM on ``tokenizer`` (safetensors) and the tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    ids = dict(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **ids,
                                  **(ARCHITECTURES[model_type] | overrides))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def probe(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask with the second row right-padded, position_ids restarting mid-row)."""
    ids = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    positions = torch.cat([torch.arange(5), torch.arange(7)]).expand(2, -1)
    return ids, mask, positions


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_split_reproduces_the_models_own_logits(arch_dir, model_type):
    model = load_model(str(arch_dir(model_type)), torch.device("cpu")).eval()
    assert model.config.model_type == model_type
    ids, mask, positions = probe(model.get_input_embeddings().num_embeddings)
    head = logits_head(model)
    with torch.no_grad():
        masked = head(hidden_states(model, ids, mask))
        assert (masked - model(input_ids=ids, attention_mask=mask).logits)[mask.bool()].abs().max() < 1e-5
        packed = head(hidden_states(model, ids, mask, positions))
        assert (packed - model(input_ids=ids, position_ids=positions).logits).abs().max() < 1e-5
    assert verify_split(model) < 1e-5


@pytest.mark.parametrize("finetune", ["full", "lora"])
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_five_mol_steps_train_every_architecture(arch_dir, make_spec, tmp_path, model_type, finetune):
    spec = make_spec(base_model=str(arch_dir(model_type)), finetune=finetune, max_steps=5, eval_every=5,
                     save_every=5, eval_batches=1, eval_data=None)
    result = train(spec, tmp_path)
    assert result.status == "succeeded" and result.step == 5
    assert all(math.isfinite(result.metrics[k]) for k in ("train/domain_ce", "train/general_kl", "eval/general_kl"))
    assert result.metrics["train/general_kl"] > 0  # the model moved away from the base, and the KL saw it


def forget_granite_scaling(monkeypatch) -> None:
    """Make the engine's head what it was before it knew Granite's ``logits_scaling``."""
    known = logits_head

    def forgetful(model):
        head = known(model)
        return lambda hidden: head(hidden) * model.config.logits_scaling

    monkeypatch.setattr("mol_engine.modeling.logits_head", forgetful)


def test_a_head_transform_the_engine_does_not_apply_fails_with_a_clear_message(arch_dir, monkeypatch):
    model = load_model(str(arch_dir("granite")), torch.device("cpu"))
    forget_granite_scaling(monkeypatch)
    with pytest.raises(ModelError, match=r"the-granite \(granite, GraniteForCausalLM\) cannot be split.*differ "
                                         r"from the model's own by up to .*logits_head"):
        verify_split(model, "the-granite")


def test_a_job_on_a_model_whose_split_fails_stops_at_load(arch_dir, make_spec, tmp_path, monkeypatch):
    forget_granite_scaling(monkeypatch)
    spec = make_spec(base_model=str(arch_dir("granite")))
    with pytest.raises(ModelError, match=rf"base_model: {arch_dir('granite')} \(granite, .*cannot be split"):
        train(spec, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_pad_token_outside_the_embedding_is_refused(arch_tokenizer, tmp_path):
    path = save_tiny(tmp_path / "model", "llama", arch_tokenizer)
    tokenizer = load_tokenizer(str(path))
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})  # a new pad added without resizing the embeddings
    tokenizer.save_pretrained(path)
    with pytest.raises(ModelError, match=rf"{path}.*pad token '\[PAD\]' id {len(arch_tokenizer)}, outside the "
                                         rf"model's embedding \({len(arch_tokenizer)} rows\).*resize_token_embeddings"):
        load_tokenizer(str(path))


def test_a_model_without_safetensors_is_refused_before_unpickling(arch_tokenizer, tmp_path):
    path = save_tiny(tmp_path / "model", "llama", arch_tokenizer)
    for weights in path.glob("*.safetensors"):
        weights.rename(path / "pytorch_model.bin")  # never opened: the check reads only the names
    with pytest.raises(ModelError, match=rf"{path} holds only pickled PyTorch weights \(pytorch_model.bin\).*"
                                         r"convert them to safetensors"):
        load_model(str(path), torch.device("cpu"))
