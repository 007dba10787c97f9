import threading

import pytest
import torch

from mol_engine.batches import Batch, Blocks, MixedBatches, document_positions
from mol_engine.prefetch import StepFeed, prepare

EOS, PAD = 1, 0


def test_target_mask_excludes_padding_and_document_starts():
    ids = torch.tensor([[5, 6, EOS, 7, 8, 9, EOS, PAD]])
    mask = torch.tensor([[True] * 7 + [False]])
    batch = Batch(ids, mask, torch.tensor([False]))
    # targets 6 EOS 7 8 9 EOS PAD; 7 follows EOS (new document), PAD is padding
    assert batch.target_mask(EOS).tolist() == [[True, True, False, True, True, True, False]]


def test_document_positions_restart_after_each_eos():
    ids = torch.tensor([[5, 6, EOS, 7, 8, EOS, 9, PAD], [4, EOS, EOS, 3, 3, 3, 3, 3]])
    assert document_positions(ids, EOS).tolist() == [[0, 1, 2, 0, 1, 2, 0, 1], [0, 1, 0, 0, 1, 2, 3, 4]]


def _blocks(n: int, value_offset: int) -> Blocks:
    """``n`` blocks of 4 tokens whose first token identifies them: value_offset + i."""
    ids = torch.tensor([[value_offset + i] * 3 + [EOS] for i in range(n)])
    return Blocks(ids, torch.ones_like(ids, dtype=torch.bool))


@pytest.mark.parametrize(("n_domain", "n_general"), [(2, 2), (3, 1), (1, 3)])
def test_every_batch_holds_the_ratio_and_flags_rows(n_domain, n_general):
    domain, general = _blocks(10, 100), _blocks(7, 200)
    stream = MixedBatches(domain, general, n_domain, n_general, seed=0)
    for _ in range(12):
        batch = stream.next_batch()
        assert batch.is_general.tolist() == [False] * n_domain + [True] * n_general
        first_tokens = batch.input_ids[:, 0]
        assert (first_tokens[:n_domain] < 200).all() and (first_tokens[n_domain:] >= 200).all()


def test_stream_covers_each_epoch_and_resumes_exactly():
    domain, general = _blocks(6, 100), _blocks(6, 200)
    stream = MixedBatches(domain, general, 2, 2, seed=5)
    seen = torch.cat([stream.next_batch().input_ids[:2, 0] for _ in range(3)])
    assert sorted(seen.tolist()) == list(range(100, 106))  # one epoch = a permutation of all blocks
    state = stream.state()
    expected = [stream.next_batch().input_ids for _ in range(4)]
    resumed = MixedBatches(domain, general, 2, 2, seed=5)
    resumed.load_state(state)
    assert all(torch.equal(resumed.next_batch().input_ids, e) for e in expected)


def test_ranks_take_disjoint_rows_of_the_global_batch():
    domain, general = _blocks(8, 100), _blocks(8, 200)
    ranks = [MixedBatches(domain, general, 2, 2, seed=0, rank=r, world_size=2) for r in range(2)]
    single = MixedBatches(domain, general, 4, 4, seed=0)
    a, b, whole = ranks[0].next_batch(), ranks[1].next_batch(), single.next_batch()
    assert torch.equal(torch.cat([a.input_ids[:2], b.input_ids[:2]]), whole.input_ids[:4])
    assert torch.equal(torch.cat([a.input_ids[2:], b.input_ids[2:]]), whole.input_ids[4:])


def test_target_index_finds_the_targets_of_each_kind_of_row():
    ids = torch.tensor([[5, 6, EOS, 7], [8, 9, 9, PAD], [4, 4, 4, 4]])
    mask = torch.tensor([[True] * 4, [True] * 3 + [False], [True] * 4])
    batch = Batch(ids, mask, torch.tensor([False, True, True]))
    index = batch.target_index(EOS)
    assert index.domain.tolist() == [0, 1] and index.general.tolist() == [4, 5, 8, 9, 10]  # flat b*T + t
    assert index.general_rows.tolist() == [1, 2] and index.general_local.tolist() == [0, 1, 4, 5, 6]
    assert index.tokens == 11 and index.domain.dtype == torch.int32


def test_the_feed_builds_ahead_but_resumes_from_the_steps_handed_out():
    domain, general = _blocks(6, 100), _blocks(6, 200)
    direct = MixedBatches(domain, general, 2, 2, seed=5)
    expected = [[direct.next_batch().input_ids for _ in range(2)] for _ in range(3)]
    feed = StepFeed(MixedBatches(domain, general, 2, 2, seed=5), 2, lambda b: prepare(b, EOS))
    assert all(torch.equal(b.input_ids, e) for b, e in zip(feed.next_step(), expected[0], strict=True))
    feed.next_step()
    after_two = feed.state()
    assert feed._ahead is not None and feed._ahead.name == "mol-next-batch"  # the third step is being built
    feed.close()
    assert feed.batches.state() == after_two and not feed._ahead  # rewound to the steps handed out, thread ended
    resumed = StepFeed(MixedBatches(domain, general, 2, 2, seed=5), 2, lambda b: prepare(b, EOS))
    resumed.load_state(after_two)
    step = resumed.next_step(ahead=False)
    assert all(torch.equal(b.input_ids, e) for b, e in zip(step, expected[2], strict=True))
    assert step[0].index is not None and not any(t.name == "mol-next-batch" for t in threading.enumerate())
