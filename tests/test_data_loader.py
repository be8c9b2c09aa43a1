import io

import numpy as np
import pytest
import torch

from data_loader import RandomWindowLoader, SequentialLoader, make_loader
from token_shards import DataError, write_dataset

SHARD_TOKENS = 1000
BLOCK_SIZE = 10
# 4 full shards and one of 700 tokens; token values are their positions in the split, so a window is
# known by its first token and its shard by first token // SHARD_TOKENS
TRAIN_TOKENS = 4 * SHARD_TOKENS + 700
WINDOWS_PER_EPOCH = 4 * (999 // BLOCK_SIZE) + 699 // BLOCK_SIZE  # 465 = 3 * 5 * 31


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "counting", [np.arange(TRAIN_TOKENS)], [np.arange(3000)],
                         {"tokenizer": "gpt2", "vocab_size": 50257}, shard_tokens=SHARD_TOKENS)


def batches(loader, count):
    return [loader.next_batch() for _ in range(count)]


def first_tokens(batch_list):
    return [int(token) for x, _ in batch_list for token in x[:, 0]]


def assert_same_batches(expected, actual):
    for (x1, y1), (x2, y2) in zip(expected, actual, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_batches_are_shifted_windows_inside_one_shard(dataset, mode):
    loader = make_loader(mode, dataset, "train", batch_size=4, block_size=BLOCK_SIZE, seed=0)
    for x, y in batches(loader, 20):
        assert x.shape == y.shape == (4, BLOCK_SIZE) and x.dtype == y.dtype == torch.long
        assert torch.equal(y, x + 1)  # consecutive token values: y is x shifted by one
        assert torch.equal(x[:, 0] // SHARD_TOKENS, y[:, -1] // SHARD_TOKENS)


def test_random_loader_seeded_per_rank_and_split_without_global_rng(dataset):
    global_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    def draws(split="train", seed=1, rank=0):
        loader = RandomWindowLoader(dataset, split, 8, BLOCK_SIZE, seed, rank=rank, world_size=2)
        return first_tokens(batches(loader, 3))
    assert draws() == draws()
    assert draws() != draws(rank=1)
    assert draws() != draws(seed=2)
    assert draws("val") != draws("val", rank=1)
    assert torch.equal(torch.get_rng_state(), global_state[0])
    assert np.array_equal(np.random.get_state()[1], global_state[1])


def test_sequential_steps_per_epoch(dataset):
    loader = SequentialLoader(dataset, "train", batch_size=4, block_size=BLOCK_SIZE, seed=0, world_size=2)
    assert loader.steps_per_epoch == 465 // 8 == 58


def test_sequential_shard_order_is_seeded_and_reshuffled_per_epoch(dataset):
    def orders(seed):
        loader = SequentialLoader(dataset, "train", 5, BLOCK_SIZE, seed)
        result = []
        for _ in range(4):
            result.append(loader.shard_order.tolist())
            batches(loader, loader.steps_per_epoch)
        return result
    assert orders(0) == orders(0)
    assert len({tuple(order) for order in orders(0)}) > 1
    assert orders(0) != orders(1)


def test_sequential_epoch_covers_every_window_once_and_ranks_split_each_step(dataset):
    whole = SequentialLoader(dataset, "train", batch_size=15, block_size=BLOCK_SIZE, seed=3)
    ranks = [SequentialLoader(dataset, "train", batch_size=5, block_size=BLOCK_SIZE, seed=3, rank=r, world_size=3)
             for r in range(3)]
    assert whole.steps_per_epoch == ranks[0].steps_per_epoch == WINDOWS_PER_EPOCH // 15
    epoch = []
    for _ in range(whole.steps_per_epoch):
        step = first_tokens([whole.next_batch()])
        assert step == [token for loader in ranks for token in first_tokens([loader.next_batch()])]
        epoch += step
    shard_lengths = [1000, 1000, 1000, 1000, 700]
    expected = {shard * SHARD_TOKENS + i * BLOCK_SIZE
                for shard, length in enumerate(shard_lengths) for i in range((length - 1) // BLOCK_SIZE)}
    assert len(epoch) == len(set(epoch)) and set(epoch) == expected
    assert (whole.epoch, whole.step_in_epoch) == (1, 0) and all(loader.epoch == 1 for loader in ranks)


def test_sequential_drops_the_partial_last_step(dataset):
    loader = SequentialLoader(dataset, "train", batch_size=100, block_size=BLOCK_SIZE, seed=0)
    assert loader.steps_per_epoch == 4
    batches(loader, 3)
    assert loader.epoch == 0
    loader.next_batch()  # the epoch's last full step; its 65 leftover windows are dropped
    assert (loader.epoch, loader.step_in_epoch) == (1, 0)


def save_and_load(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_state_dict_resumes_exactly(dataset, mode):
    def new_loader():
        return make_loader(mode, dataset, "train", batch_size=16, block_size=BLOCK_SIZE, seed=5)
    original = new_loader()
    batches(original, 20)
    state = original.state_dict()
    expected = batches(original, 15)  # crosses an epoch boundary for the sequential loader (29 steps)
    for loaded_state in (state, save_and_load(state)):
        resumed = new_loader()
        resumed.load_state_dict(loaded_state)
        assert_same_batches(expected, batches(resumed, 15))


def test_random_resume_from_another_ranks_state_replays_own_draws(dataset):
    def new_loader(rank):
        return RandomWindowLoader(dataset, "train", 4, BLOCK_SIZE, seed=0, rank=rank, world_size=2)
    rank0, rank1 = new_loader(0), new_loader(1)
    batches(rank0, 6)
    batches(rank1, 6)
    resumed = new_loader(1)
    resumed.load_state_dict(rank0.state_dict())  # a checkpoint holds rank 0's state only
    assert_same_batches(batches(rank1, 3), batches(resumed, 3))


def test_sequential_resume_with_other_world_size_keeps_global_position(dataset):
    single = SequentialLoader(dataset, "train", batch_size=15, block_size=BLOCK_SIZE, seed=0)
    batches(single, 7)
    state = single.state_dict()
    ranks = [SequentialLoader(dataset, "train", batch_size=5, block_size=BLOCK_SIZE, seed=0, rank=r, world_size=3)
             for r in range(3)]
    for loader in ranks:
        loader.load_state_dict(state)
    assert first_tokens([single.next_batch()]) == [t for loader in ranks for t in first_tokens([loader.next_batch()])]


def test_loader_errors(dataset):
    with pytest.raises(DataError, match="Unknown data loader 'shuffled'. Accepted data loaders: random, sequential"):
        make_loader("shuffled", dataset, "train", batch_size=2, block_size=BLOCK_SIZE, seed=0)
    with pytest.raises(DataError, match="too small for the sequential loader"):
        make_loader("sequential", dataset, "val", batch_size=400, block_size=BLOCK_SIZE, seed=0)
    with pytest.raises(DataError, match="too small for the random loader"):
        make_loader("random", dataset, "val", batch_size=2, block_size=1000, seed=0)
    random_state = make_loader("random", dataset, "train", batch_size=2, block_size=BLOCK_SIZE, seed=0).state_dict()
    sequential = make_loader("sequential", dataset, "train", batch_size=2, block_size=BLOCK_SIZE, seed=0)
    with pytest.raises(DataError, match="saved data loader state is from the 'random' loader"):
        sequential.load_state_dict(random_state)
