"""Batches of training windows from a prepared dataset (see token_shards.py), two ways:

  random      RandomWindowLoader: windows at random positions, as nanoGPT samples them
  sequential  SequentialLoader: epochs of consecutive windows over all tokens, shard order reshuffled

Both return (x, y) LongTensors of shape (batch_size, block_size) where y is x shifted by one token,
never let a window cross a shard boundary, and resume exactly: load_state_dict(state_dict()) makes the
next batches bit-identical to the ones the original loader would have produced.
"""
import numpy as np
import torch

from token_shards import SPLITS, TOKEN_DTYPE, DataError, checked_split


class _ShardWindowLoader:
    """What both loaders share: the split's shards, option checks and turning windows into tensors."""
    kind = None

    def __init__(self, info, split, batch_size, block_size, seed, rank=0, world_size=1, device="cpu"):
        for name, value, lowest in (("batch_size", batch_size, 1), ("block_size", block_size, 1),
                                    ("world_size", world_size, 1), ("rank", rank, 0)):
            if not isinstance(value, int) or value < lowest:
                raise DataError(f"{name}={value!r} is not accepted by the data loader: use an integer >= {lowest}.")
        if rank >= world_size:
            raise DataError(f"rank={rank} is not accepted with world_size={world_size}: ranks run from 0 to "
                            f"world_size-1.")
        self.split = checked_split(split)
        self.files = info.files(split)
        self.shard_tokens = np.array([path.stat().st_size // TOKEN_DTYPE.itemsize for path in self.files],
                                     dtype=np.int64)
        self.batch_size, self.block_size, self.seed = batch_size, block_size, seed
        self.rank, self.world_size, self.device = rank, world_size, device
        self.dataset_path = info.path

    def _too_small(self, needed):
        return DataError(f"The {self.split} split of {self.dataset_path} is too small for the {self.kind} loader: "
                         f"it needs {needed}, and its shards hold {self.shard_tokens.tolist()} tokens. "
                         "Use a smaller block_size / batch_size or prepare more data.")

    def _windows_to_batch(self, shard_ids, starts):
        """x, y on the device for windows of block_size+1 tokens at starts of the shards shard_ids."""
        windows = np.empty((len(starts), self.block_size + 1), dtype=np.int64)
        for shard_id in np.unique(shard_ids):
            # a fresh memmap per batch, as nanoGPT does: a long-lived one keeps growing resident memory
            tokens = np.memmap(self.files[shard_id], dtype=TOKEN_DTYPE, mode="r")
            for row in np.flatnonzero(shard_ids == shard_id):
                windows[row] = tokens[starts[row]:starts[row] + self.block_size + 1]
        windows = torch.from_numpy(windows)
        return self._to_device(windows[:, :-1].contiguous()), self._to_device(windows[:, 1:].contiguous())

    def _to_device(self, tensor):
        if str(self.device).startswith("cuda"):
            # pinned memory lets the copy overlap with the GPU's work on the previous step
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _checked_state(self, state):
        if not isinstance(state, dict) or state.get("loader") != self.kind:
            found = state.get("loader") if isinstance(state, dict) else type(state).__name__
            raise DataError(f"The saved data loader state is from the {found!r} loader, but this run uses the "
                            f"{self.kind!r} loader. Resume with the same data_loader setting.")
        return state


class RandomWindowLoader(_ShardWindowLoader):
    """Windows of block_size+1 tokens at uniformly random positions of the split, as in nanoGPT.

    Every window that fits inside one shard is equally likely (so a shard is picked in proportion to
    its number of window positions). Draws come from the loader's own generator, seeded by seed, rank
    and split: reproducible, different per rank and split, and independent of the global RNGs.
    """
    kind = "random"

    def __init__(self, info, split, batch_size, block_size, seed, rank=0, world_size=1, device="cpu"):
        super().__init__(info, split, batch_size, block_size, seed, rank, world_size, device)
        starts_per_shard = np.maximum(self.shard_tokens - block_size, 0)
        self.num_windows = int(starts_per_shard.sum())
        if self.num_windows == 0:
            raise self._too_small(f"a shard of at least block_size+1 = {block_size + 1} tokens")
        self.first_window_of_shard = np.cumsum(starts_per_shard) - starts_per_shard
        self.generator = self._new_generator()
        self.batches_drawn = 0

    def _new_generator(self):
        return np.random.Generator(np.random.PCG64([self.seed + 1000 * self.rank, SPLITS.index(self.split)]))

    def _draw_windows(self):
        window_ids = self.generator.integers(0, self.num_windows, size=self.batch_size)
        self.batches_drawn += 1
        shard_ids = np.searchsorted(self.first_window_of_shard, window_ids, side="right") - 1
        return shard_ids, window_ids - self.first_window_of_shard[shard_ids]

    def next_batch(self):
        return self._windows_to_batch(*self._draw_windows())

    def state_dict(self):
        bit_state = self.generator.bit_generator.state
        return {"loader": self.kind, "seed": self.seed, "rank": self.rank, "batches_drawn": self.batches_drawn,
                "generator": [bit_state["state"]["state"], bit_state["state"]["inc"],
                              bit_state["has_uint32"], bit_state["uinteger"]]}

    def load_state_dict(self, state):
        state = self._checked_state(state)
        if (state["seed"], state["rank"]) == (self.seed, self.rank):
            pcg_state, pcg_inc, has_uint32, uinteger = state["generator"]
            self.generator.bit_generator.state = {"bit_generator": "PCG64", "has_uint32": has_uint32,
                                                  "uinteger": uinteger,
                                                  "state": {"state": pcg_state, "inc": pcg_inc}}
            self.batches_drawn = state["batches_drawn"]
        else:
            # another rank's (or seed's) state: replay this loader's own draws up to the same point
            self.generator, self.batches_drawn = self._new_generator(), 0
            for _ in range(state["batches_drawn"]):
                self._draw_windows()


class SequentialLoader(_ShardWindowLoader):
    """Epochs of consecutive, non-overlapping windows over every token of the split.

    At the start of each epoch the shard order is shuffled by a generator seeded with (seed, epoch), the
    same on every rank. Each shard is cut into floor((tokens-1)/block_size) windows; window i of a shard
    starts at token i*block_size and also reads the next window's first token as its last target. A
    step takes the next batch_size*world_size windows of that epoch order, and rank r takes its own
    batch_size of them (windows [r*batch_size, (r+1)*batch_size) of the step). Windows left over at the
    end of an epoch that cannot fill a whole step are dropped.

    epoch counts completed passes: it increments inside the next_batch() call that returns an epoch's
    last batch, so a trainer sees the boundary as a change of loader.epoch. The position is kept in
    windows of the epoch consumed by all ranks together, so a resume may change world_size.
    """
    kind = "sequential"

    def __init__(self, info, split, batch_size, block_size, seed, rank=0, world_size=1, device="cpu"):
        super().__init__(info, split, batch_size, block_size, seed, rank, world_size, device)
        self.windows_per_shard = np.maximum(self.shard_tokens - 1, 0) // block_size
        self.windows_per_step = batch_size * world_size
        self.windows_per_epoch = int(self.windows_per_shard.sum())
        self.steps_per_epoch = self.windows_per_epoch // self.windows_per_step
        if self.steps_per_epoch == 0:
            raise self._too_small(f"{self.windows_per_step} windows of {block_size} tokens for one step "
                                  f"(batch_size {batch_size} x world_size {world_size})")
        self._start_epoch(0)

    def _start_epoch(self, epoch):
        self.epoch, self.windows_done = epoch, 0
        self.shard_order = np.random.default_rng([self.seed, epoch]).permutation(len(self.files))
        windows_in_order = self.windows_per_shard[self.shard_order]
        self.first_window_in_order = np.cumsum(windows_in_order) - windows_in_order

    @property
    def step_in_epoch(self):
        return self.windows_done // self.windows_per_step

    def next_batch(self):
        first = self.windows_done + self.rank * self.batch_size
        window_ids = np.arange(first, first + self.batch_size)
        positions = np.searchsorted(self.first_window_in_order, window_ids, side="right") - 1
        starts = (window_ids - self.first_window_in_order[positions]) * self.block_size
        batch = self._windows_to_batch(self.shard_order[positions], starts)
        self._move_to(self.windows_done + self.windows_per_step)
        return batch

    def _move_to(self, windows_done):
        self.windows_done = windows_done
        if windows_done + self.windows_per_step > self.windows_per_epoch:
            self._start_epoch(self.epoch + 1)

    def state_dict(self):
        return {"loader": self.kind, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "windows_done": self.windows_done}

    def load_state_dict(self, state):
        state = self._checked_state(state)
        self._start_epoch(state["epoch"])
        self._move_to(state["windows_done"])


LOADERS = {"random": RandomWindowLoader, "sequential": SequentialLoader}


def make_loader(mode, info, split, batch_size, block_size, seed, rank=0, world_size=1, device="cpu"):
    """The loader called mode ("random" or "sequential") over one split of a prepared dataset."""
    if mode not in LOADERS:
        raise DataError(f"Unknown data loader {mode!r}. Accepted data loaders: {', '.join(LOADERS)}.")
    return LOADERS[mode](info, split, batch_size, block_size, seed, rank, world_size, device)
