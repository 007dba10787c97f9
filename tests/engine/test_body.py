"""The transformer body (issue 19, item 3): the attention kernel a run picks, compiled decoder layers, and packed
documents attended through a block-sparse FlexAttention mask instead of a dense [T, T] one."""

import itertools

import pytest
import torch

from mol_engine.batches import document_positions
from mol_engine.callbacks import Callback
from mol_engine.modeling import (
    ModelError,
    decoder_layers,
    for_generation,
    hidden_states,
    load_model,
    logits_head,
    pick_attention,
    use_compile,
)
from mol_engine.spec import JobSpec
from mol_engine.train import setup_run

BASE = {"base_model": "m", "domain_data": ["d.jsonl"], "general_data": ["g.jsonl"]}
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def spec(**fields) -> JobSpec:
    return JobSpec(**(BASE | fields))


def test_auto_attention_picks_a_kernel_that_builds_no_dense_mask_for_packed_documents_on_cuda(monkeypatch):
    monkeypatch.setattr("mol_engine.modeling.flash_attention_available", lambda: True)
    assert pick_attention(spec(), CUDA, torch.bfloat16) == "flash_attention_2"
    assert pick_attention(spec(packing="document"), CUDA, torch.float32) == "flex_attention"  # flash: no fp32
    assert pick_attention(spec(), CPU, torch.float32) is None  # transformers' default: sdpa where the model has it
    monkeypatch.setattr("mol_engine.modeling.flash_attention_available", lambda: False)
    assert pick_attention(spec(packing="document"), CUDA, torch.bfloat16) == "flex_attention"
    assert pick_attention(spec(), CUDA, torch.bfloat16) is None
    assert pick_attention(spec(attention="flex"), CUDA, torch.bfloat16) == "flex_attention"
    with pytest.raises(ModelError, match=r"^attention: flash_attention_2 needs the flash-attn package"):
        pick_attention(spec(attention="flash_attention_2"), CUDA, torch.bfloat16)
    with pytest.raises(ModelError, match=r"^attention: flex needs a CUDA device"):  # device auto on a CPU machine
        pick_attention(spec(attention="flex"), CPU, torch.float32)
    assert pick_attention(spec(attention="sdpa", packing="document"), CPU, torch.float32) == "sdpa"


def test_compile_is_on_for_cuda_by_default_and_wherever_asked():
    assert use_compile(spec(), CUDA) and not use_compile(spec(), CPU)
    assert use_compile(spec(compile="on"), CPU) and not use_compile(spec(compile="off"), CUDA)


class Events(Callback):
    def __init__(self) -> None:
        self.events: list[dict] = []

    def on_event(self, event: dict) -> None:
        self.events.append(event)


def test_compile_on_compiles_the_model_and_its_reference_layer_by_layer_and_says_so(make_spec, tmp_path):
    """The frozen copy runs compiled layers as the model does (its numerics: KL 0 at step 0). Nothing runs here:
    compiling on a CPU costs tens of seconds (a 3-step tiny run took 32 s, against 0.5 s with compile off)."""
    events = Events()
    run = setup_run(make_spec(compile="on"), tmp_path, events)
    layers = decoder_layers(run.model) + decoder_layers(run.reference.model)
    assert len(layers) == 4 and all(layer._compiled_call_impl is not None for layer in layers)
    config = next(e for e in events.events if e["kind"] == "config")
    assert "attention=sdpa compile=on" in config["message"] and (config["attention"], config["compile"]) == (
        "sdpa", True)
    plain = setup_run(make_spec(), tmp_path / "plain")
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(plain.model))


def test_packed_documents_under_flex_attention_give_each_document_its_logits_alone(tiny_model_dir):
    """FlexAttention runs forward-only on a CPU (torch 2.13 has no CPU backward; CUDA trains with it), which is
    enough to check its block-sparse mask: a packed row's logits equal each document's run alone and the dense
    SDPA mask's. Its CPU compilation makes this the slow test of the file (about 6-12 s)."""
    dense = load_model(str(tiny_model_dir), CPU, attention="sdpa").eval()
    flex = load_model(str(tiny_model_dir), CPU, attention="sdpa").eval()
    flex.config._attn_implementation = "flex_attention"  # as loading it so would, without compiling the load check
    eos = dense.config.eos_token_id
    lengths = (9, 14, 5)  # three documents, each ending with EOS, then right padding as the blocks have it
    docs = [torch.cat([torch.randint(3, 300, (n - 1,), generator=torch.Generator().manual_seed(n)),
                       torch.tensor([eos])]) for n in lengths]
    row = torch.cat([*docs, torch.full((4,), dense.config.pad_token_id)])[None]
    positions = document_positions(row, eos)

    def logits(model, ids, position_ids=None):
        return logits_head(model)(hidden_states(model, ids, torch.ones_like(ids), position_ids))[0]

    with torch.no_grad():
        with torch.compiler.set_stance("force_eager"):  # the same BlockMask and mask function, unfused kernel
            packed = logits(flex, row, positions)[: sum(lengths)]
        alone = torch.cat([logits(dense, d[None]) for d in docs])
        masked = logits(dense, row, positions)[: sum(lengths)]
        leaky = logits(dense, row)[: sum(lengths)]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed, masked, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaky, alone, atol=1e-3)  # the check can fail: without positions, documents mix
    with for_generation(flex):  # generation decodes with SDPA (flex's decode kernel fails to build on a CPU)
        assert flex.config._attn_implementation == "sdpa"
    assert flex.config._attn_implementation == "flex_attention"


def test_a_kernel_the_architecture_lacks_fails_naming_attention_unless_auto_picked_it(make_spec):
    from mol_engine.train import _load_trained

    with pytest.raises(ModelError, match=r"^attention: cannot load"):
        _load_trained(make_spec(attention="sdpa"), CPU, torch.float32, "no_such_kernel")
    model = _load_trained(make_spec(), CPU, torch.float32, "no_such_kernel")  # auto: transformers' default
    assert model.config._attn_implementation == "sdpa"


def test_float32_weights_under_a_half_only_kernel_are_checked_under_bf16_autocast(tiny_model_dir, monkeypatch):
    """flash-attention computes in bf16/fp16 only: the load check of a full fine-tuning model (float32 masters) runs
    under autocast as training does (flash-attn itself cannot run here: SDPA stands in for a half-only kernel)."""
    from mol_engine import modeling

    seen = []

    def record(*_):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)

    monkeypatch.setattr(modeling, "verify_split", record)
    load_model(str(tiny_model_dir), CPU, attention="sdpa")
    monkeypatch.setattr(modeling, "FLASH", ("sdpa",))
    model = load_model(str(tiny_model_dir), CPU, attention="sdpa")
    assert seen == [None, torch.bfloat16] and model.dtype == torch.float32
    monkeypatch.undo()
    model.config._attn_implementation = "flash_attention_2"  # as a CUDA run would have it (no forward here)
    with for_generation(model):  # nor can flash generate from float32 weights outside autocast (self-sampling)
        assert model.config._attn_implementation == "sdpa"
    assert model.config._attn_implementation == "flash_attention_2"


def reference_varlen(module, query, key, value, attention_mask, scaling=None, cu_seq_lens_q=None, **_):
    """flash_attn_varlen_func's contract in plain torch (flash-attn needs CUDA): causal attention within each
    sequence of the flattened batch that ``cu_seq_lens_q`` delimits; without it, each row is one sequence."""
    batch, heads, length, dim = query.shape
    flat = [x.transpose(1, 2).reshape(batch * length, heads, dim) for x in (query, key, value)]
    bounds = cu_seq_lens_q.tolist() if cu_seq_lens_q is not None else list(range(0, batch * length + 1, length))
    out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        *(x[a:b].transpose(0, 1) for x in flat), is_causal=True, scale=scaling).transpose(0, 1)
        for a, b in itertools.pairwise(bounds)])
    return out.reshape(batch, length, heads, dim), None


def test_packed_rows_reach_flash_attention_as_variable_length_sequences(tiny_model_dir, monkeypatch):
    """transformers infers flash-attention's sequences from position ids for a batch of one row only: with more,
    each row ran as one causal sequence across its documents. The engine passes the sequences itself."""
    from transformers.modeling_utils import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, "flash_attention_2", reference_varlen)
    model = load_model(str(tiny_model_dir), CPU).eval()
    docs = [torch.randint(3, 300, (n,), generator=torch.Generator().manual_seed(n)) for n in (6, 10, 7, 9)]
    eos = model.config.eos_token_id
    rows = torch.stack([torch.cat([docs[0], torch.tensor([eos]), docs[1]]), torch.cat([docs[2], torch.tensor([eos]),
                                                                                         docs[3]])])
    positions = document_positions(rows, eos)
    with torch.no_grad():
        dense = hidden_states(model, rows, torch.ones_like(rows), positions)  # SDPA's block-diagonal mask
        model.config._attn_implementation = "flash_attention_2"
        varlen = hidden_states(model, rows, torch.ones_like(rows), positions)
        model.config._attn_implementation = "flex_attention"  # its BlockMask, per row of the batch
        with torch.compiler.set_stance("force_eager"):
            flex = hidden_states(model, rows, torch.ones_like(rows), positions)
    torch.testing.assert_close(varlen, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
