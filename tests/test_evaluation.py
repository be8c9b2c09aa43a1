"""HellaSwag loading and scoring on hand-made items in the official format, and text samples."""
import json
import math

import pytest
import torch
import torch.nn as nn

from evaluation import (HellaSwagCounts, HellaSwagExample, ending_batch, ending_log_likelihoods,
                        evaluate_hellaswag, generate_sample, hellaswag_file, load_hellaswag)
from model_builder import build_model
from model_config import ModelConfig
from token_shards import DataError
from tokenizer import CharTokenizer

FAVOURED = "aeiou"  # the forced model puts its probability on these characters
LOGIT = 8.0


def official_item(ctx_a, ctx_b, endings, label, ind=0):
    """A line as in hellaswag_val.jsonl (every field the official file has)."""
    return {"ind": ind, "activity_label": "Testing", "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": f"{ctx_a} {ctx_b}".strip(), "split": "val", "split_type": "indomain",
            "endings": endings, "source_id": f"test~{ind}", "label": label}


# right endings use only favoured characters, wrong ones none; the label moves around
ITEMS = [
    official_item("The man picks up", "the", ["xyz xz", "aei ou", "zyx zz", "xx yz"], 1, ind=1),
    official_item("She opens", "the", ["ooo eee", "zzz yyy", "yxz xyx", "xyz zyx"], 0, ind=2),
    official_item("They sit", "on it", ["zzyy x", "xyxy z", "yyzz x", "iou aea"], 3, ind=3),
]


def write_jsonl(path, items, raw_lines=()):
    path.write_text("".join(json.dumps(item) + "\n" for item in items) + "".join(raw_lines))
    return path


def tokenizer_for(items):
    return CharTokenizer("".join(item["ctx"] + "".join(item["endings"]) + " " for item in items) + FAVOURED)


class ForcedModel(nn.Module):
    """Puts logit LOGIT on the favoured characters at every position, 0 elsewhere; counts calls."""

    def __init__(self, tokenizer):
        super().__init__()
        self.favoured = torch.zeros(tokenizer.vocab_size)
        self.favoured[tokenizer.encode(FAVOURED)] = LOGIT
        self.calls = 0

    def forward(self, idx, targets=None):
        self.calls += 1
        return self.favoured.expand(*idx.shape, -1).clone(), None


def forced_log_probs(tokenizer):
    """Log-probabilities of a favoured and of any other character under ForcedModel."""
    log_z = math.log(len(FAVOURED) * math.exp(LOGIT) + tokenizer.vocab_size - len(FAVOURED))
    return LOGIT - log_z, -log_z


def test_loads_the_official_format(tmp_path):
    examples = load_hellaswag(write_jsonl(tmp_path / "val.jsonl", ITEMS))
    assert [e.label for e in examples] == [1, 0, 3]
    assert examples[0] == HellaSwagExample("The man picks up the", ("xyz xz", "aei ou", "zyx zz", "xx yz"), 1)
    assert len(load_hellaswag(tmp_path / "val.jsonl", limit=2)) == 2


def test_builds_ctx_from_ctx_a_and_ctx_b_when_ctx_is_missing(tmp_path):
    item = {k: v for k, v in ITEMS[0].items() if k != "ctx"}
    assert load_hellaswag(write_jsonl(tmp_path / "val.jsonl", [item]))[0].ctx == "The man picks up the"


@pytest.mark.parametrize("bad_line, complaint", [
    ('{"ctx": "a", "endings": ["b", "c"', "not valid JSON"),
    (json.dumps({"ctx": "a", "endings": ["b", "c", "d"], "label": 0}), "'endings' must be a list of 4"),
    (json.dumps({"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 4}), "'label' must be an integer"),
    (json.dumps({"endings": ["b", "c", "d", "e"], "label": 0}), "'ctx'"),
])
def test_a_malformed_line_names_the_file_and_line_number(tmp_path, bad_line, complaint):
    path = write_jsonl(tmp_path / "val.jsonl", ITEMS[:2], [bad_line + "\n"])
    with pytest.raises(DataError) as error:
        load_hellaswag(path)
    assert f"{path}, line 3" in str(error.value) and complaint in str(error.value)


def test_hellaswag_file_uses_a_local_path_or_the_cache_without_downloading(tmp_path):
    local = write_jsonl(tmp_path / "mine.jsonl", ITEMS)
    assert hellaswag_file(local) == local
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = write_jsonl(cache / "hellaswag_val.jsonl", ITEMS)
    assert hellaswag_file(None, cache_dir=cache) == cached
    with pytest.raises(DataError, match="hellaswag_path='.*missing.jsonl' does not exist"):
        hellaswag_file(tmp_path / "missing.jsonl")


def test_the_forced_model_scores_every_item_right(tmp_path):
    examples = load_hellaswag(write_jsonl(tmp_path / "val.jsonl", ITEMS))
    tokenizer = tokenizer_for(ITEMS)
    counts = evaluate_hellaswag(ForcedModel(tokenizer), tokenizer, examples, block_size=64, device="cpu")
    assert counts == HellaSwagCounts(correct=3, correct_norm=3, count=3)


def test_log_likelihoods_are_summed_and_averaged_over_the_ending_tokens_only():
    tokenizer = tokenizer_for(ITEMS)
    good, other = forced_log_probs(tokenizer)
    example = HellaSwagExample("xyz", ("aa", "x", "ae iou", "zz"), 0)
    summed, mean = ending_log_likelihoods(ForcedModel(tokenizer), tokenizer, example, 64, "cpu")
    # " aa": the space is not favoured, both a's are; the context's own tokens never count
    expected = torch.tensor([other + 2 * good, 2 * other, 2 * other + 5 * good, 3 * other])
    assert torch.allclose(summed, expected, atol=1e-5)
    assert torch.allclose(mean, expected / torch.tensor([3.0, 2.0, 7.0, 3.0]), atol=1e-5)


def test_acc_prefers_short_endings_and_acc_norm_corrects_for_length():
    tokenizer = tokenizer_for(ITEMS)
    # the right ending is long and likely per token, a wrong one short: summed picks the short one
    example = HellaSwagExample("xyz", ("x", "aeiouaeiouaeiou", "zyxzyxzyxzyx", "yzyzyzyzyzyzyz"), 1)
    counts = evaluate_hellaswag(ForcedModel(tokenizer), tokenizer, [example], block_size=64, device="cpu")
    assert counts == HellaSwagCounts(correct=0, correct_norm=1, count=1)


def test_ending_batch_truncates_from_the_left_and_masks_the_ending():
    inputs, targets, mask = ending_batch([1, 2, 3, 4, 5, 6], [[7, 8], [9]], block_size=4)
    # rows cut to block_size + 1 tokens: [4, 5, 6, 7, 8] and [3, 4, 5, 6, 9]; no padding needed
    assert inputs.tolist() == [[4, 5, 6, 7], [3, 4, 5, 6]]
    assert targets.tolist() == [[5, 6, 7, 8], [4, 5, 6, 9]]
    assert mask.tolist() == [[0, 0, 1, 1], [0, 0, 0, 1]]
    inputs, targets, mask = ending_batch([1, 2], [[7, 8, 9], [9]], block_size=16)
    assert inputs.tolist() == [[1, 2, 7, 8], [1, 2, 0, 0]]  # right padding
    assert mask.tolist() == [[0, 1, 1, 1], [0, 1, 0, 0]]


def test_padding_in_the_batch_does_not_change_any_ending_score():
    torch.manual_seed(0)
    tokenizer = tokenizer_for(ITEMS)
    model = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=tokenizer.vocab_size))
    example = HellaSwagExample("The man picks up the", ("x", "aei ou aei", "zyx", "xx yz zz xy"), 1)
    summed, mean = ending_log_likelihoods(model, tokenizer, example, 32, "cpu")
    for i, ending in enumerate(example.endings):
        alone = HellaSwagExample(example.ctx, (ending,), 0)
        alone_summed, alone_mean = ending_log_likelihoods(model, tokenizer, alone, 32, "cpu")
        assert alone_summed.item() == pytest.approx(summed[i].item(), abs=1e-4)
        assert alone_mean.item() == pytest.approx(mean[i].item(), abs=1e-4)


def test_ranks_share_the_examples_and_run_the_same_number_of_forward_passes(tmp_path):
    examples = load_hellaswag(write_jsonl(tmp_path / "val.jsonl", ITEMS))
    tokenizer = tokenizer_for(ITEMS)
    models = [ForcedModel(tokenizer), ForcedModel(tokenizer)]
    counts = [evaluate_hellaswag(models[rank], tokenizer, examples, 64, "cpu", rank=rank, world_size=2)
              for rank in range(2)]
    assert [c.count for c in counts] == [2, 1]
    assert [m.calls for m in models] == [2, 2]  # rank 1 pads with an uncounted example
    assert [sum(column) for column in zip(*counts)] == [3, 3, 3]


def test_generate_sample_is_seeded_and_leaves_the_training_state_alone():
    tokenizer = CharTokenizer("abcdefgh \n")
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=tokenizer.vocab_size))
    model.train()
    rng_before = torch.get_rng_state()
    first = generate_sample(model, tokenizer, "abc", 20, temperature=1.0, top_k=None, device="cpu")
    second = generate_sample(model, tokenizer, "abc", 20, temperature=1.0, top_k=None, device="cpu")
    assert first == second and first.startswith("abc") and len(first) == 23
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert model.training


def test_generate_sample_never_emits_the_padding_of_a_padded_vocabulary():
    tokenizer = CharTokenizer("ab")
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64))
    with torch.no_grad():  # make the padding ids (2..63) by far the most likely
        model.lm_head.weight[2:] += 5 * model.lm_head.weight[:1] / model.lm_head.weight[:1].norm() ** 2
    text = generate_sample(model, tokenizer, "ab", 20, temperature=1.0, top_k=None, device="cpu")
    assert len(text) == 22 and set(text) <= {"a", "b"}
