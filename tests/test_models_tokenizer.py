"""The locally trained tokenizers: chat-template tokens, tags and labels as stable token sequences,
newline runs as single tokens for Gemma3, and the published chat-template formats."""

from __future__ import annotations

import pytest

from chexrl.core.parsing import format_completion
from chexrl.core.schemas import CHEXPERT14
from chexrl.models.loading import load_processor, load_tokenizer
from chexrl.models.tokenizer import GEMMA3_CONTROL, NEWLINE_RUNS, QWEN_SPECIAL, TAGS

CONTROL = {"gemma3": ("<bos>", "<eos>", "<pad>", *GEMMA3_CONTROL), "qwen2_5_vl": QWEN_SPECIAL}


def _family(model_dir) -> str:
    return "gemma3" if "gemma3" in str(model_dir) else "qwen2_5_vl"


def test_control_tokens_and_tags_are_single_tokens(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    for token in (*CONTROL[_family(tiny_model_dir)], *TAGS):
        ids = tok.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [token], token
    assert len(set(tok.get_vocab().values())) == len(tok) <= 2048  # dense ids, small vocabulary


def test_labels_round_trip_as_stable_sequences(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    for label in CHEXPERT14:
        ids = tok.encode(label, add_special_tokens=False)
        assert tok.decode(ids) == label
        assert len(ids) <= 3, (label, tok.convert_ids_to_tokens(ids))  # the corpus taught them
        # Inside an answer, right after the tag, the label is spelt with the same tokens.
        completion = tok.encode(format_completion("Heart size is normal.", [label]), add_special_tokens=False)
        start = completion.index(tok.convert_tokens_to_ids("<solution>")) + 1
        assert completion[start : start + len(ids)] == ids


def test_radiology_text_round_trips(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    text = format_completion(
        "Frontal view: the cardiac silhouette is enlarged (CTR 0.6).\n\nSmall left pleural effusion; no pneumothorax.",
        ["Cardiomegaly", "Pleural Effusion"],
    )
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 2  # words, not characters
    assert tok.unk_token_id not in ids


def test_gemma3_newline_runs_are_single_vocabulary_tokens(tiny_gemma3_dir):
    tok = load_tokenizer(tiny_gemma3_dir)
    vocab = tok.get_vocab()
    for run in NEWLINE_RUNS:  # vLLM's Gemma3 processing looks these strings up in the vocabulary
        assert run in vocab
        assert tok.encode(run, add_special_tokens=False) == [vocab[run]]


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        (
            "tiny_gemma3_dir",
            "<bos><start_of_turn>user\nBe brief.\n\n<start_of_image>List findings.<end_of_turn>\n"
            "<start_of_turn>model\n",
        ),
        (
            "tiny_qwen_dir",
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>List findings.<|im_end|>\n<|im_start|>assistant\n",
        ),
    ],
)
def test_published_chat_template(request, fixture, expected):
    processor = load_processor(request.getfixturevalue(fixture))
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "List findings."}]},
    ]
    assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == expected
