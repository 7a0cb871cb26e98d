"""Locally trained tokenizers for the random-weight checkpoints, and the families' chat templates.

No tokenizer can be downloaded here, so each family gets a small one trained on a generated corpus
(prompt text, the answer tags, every label of every schema, radiology-style reasoning), built with the
family's own transformers tokenizer class so it behaves like the published one:

- gemma3: `GemmaTokenizer`, a SentencePiece-style BPE (spaces spelt "▁", byte fallback), with the
  literal newline runs "\\n" .. "\\n\\n\\n\\n" as single tokens (vLLM's Gemma3 processing looks them
  up by string; a byte-level BPE spells them "Ċ" and fails).
- qwen2_5_vl: `Qwen2Tokenizer`, a byte-level BPE with Qwen's pre-tokenizer regex.

The special tokens of the chat templates are single tokens; so are the tags <think> </think> <solution>
</solution>. The corpus and the training are deterministic (fixed seed, one thread), so two builds give
the same files.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from chexrl.core.parsing import SOLUTION_CLOSE, SOLUTION_OPEN, THINK_CLOSE, THINK_OPEN
from chexrl.core.schemas import CHEXPERT14, NIH9, NIH10

TAGS: tuple[str, ...] = (THINK_OPEN, THINK_CLOSE, SOLUTION_OPEN, SOLUTION_CLOSE)
NEWLINE_RUNS: tuple[str, ...] = ("\n", "\n\n", "\n\n\n", "\n\n\n\n")

# The published chat templates (google/medgemma-4b-it = gemma-3-4b-it's; Qwen/Qwen2.5-VL-3B-Instruct's).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Gemma's reserved tokens, in the published order of the low ids; then the turn and image tokens.
GEMMA3_SPECIAL = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
GEMMA3_CONTROL = (
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)
# Qwen2's control tokens, in the published order (they follow the BPE vocabulary, from id 151643).
QWEN_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_EXTRA = ("<tool_call>", "</tool_call>")

_ANATOMY = (
    "lung lungs heart cardiac mediastinum mediastinal hilum hilar hila diaphragm hemidiaphragm costophrenic "
    "angle angles apex apices base bases lobe lobes upper middle lower left right bilateral unilateral "
    "pleura pleural space rib ribs clavicle spine vertebral trachea bronchi bronchial airway aorta aortic "
    "knob silhouette border contour parenchyma interstitial alveolar vascular vasculature pulmonary chest "
    "thorax thoracic soft tissue tissues bony structures abdomen stomach bubble sternum scapula shoulder "
    "retrocardiac perihilar subsegmental segmental basilar lingula fissure"
)
_FINDINGS = (
    "opacity opacities consolidation effusion effusions edema atelectasis cardiomegaly pneumothorax "
    "pneumonia fracture fractures lesion lesions nodule nodules mass masses infiltrate infiltration "
    "emphysema fibrosis thickening hernia scarring blunting congestion enlargement enlarged collapse "
    "air bronchogram kerley lines cephalization calcification calcified granuloma devices device tube "
    "tubes line lines catheter pacemaker wires sternotomy clips endotracheal nasogastric central venous "
    "port stent valve drain support"
)
_WORDS = (
    "the a an of in on at to with without and or no not is are was were be been there this that these "
    "which as for from by into than then also but may might could likely unlikely possible probable "
    "suggest suggests suggesting consistent compatible concerning finding findings impression image "
    "images view frontal lateral portable upright supine pa ap radiograph radiographs x-ray xray study "
    "exam examination patient prior comparison compared stable unchanged new increased decreased "
    "improved worsened mild mildly moderate severe small large trace minimal subtle focal diffuse patchy "
    "streaky linear round well-defined ill-defined normal abnormal clear clearly visible seen noted "
    "identified present absent evidence acute chronic old healed displaced size shape position within "
    "limits top above below along near both each either other otherwise remain remains appear appears "
    "appearance likely represents represent given overall therefore so because since however although "
    "look looking check checked first next finally answer labels label list listed choose chosen select "
    "only all any one two three none more less most least reason reasoning think step steps carefully "
    "assess assessed describe described question you your i we it its expert radiologist reading report "
    "findings: impression: answer: choices: from following options correct output format"
)
_PROMPTS = (
    "You are an expert radiologist. Look at the chest X-ray and list every finding that is present.",
    "Choose the labels that apply from the following list:",
    "First think step by step inside <think> </think>, then give the labels inside <solution> </solution>.",
    "Answer with a comma separated list of labels. If nothing is abnormal, answer No Finding.",
    "Describe the image.",
    "What abnormalities are visible on this frontal chest radiograph?",
)


def _sentences(rng: random.Random, labels: list[str]) -> list[str]:
    anatomy, findings, words = _ANATOMY.split(), _FINDINGS.split(), _WORDS.split()
    out: list[str] = []
    for _ in range(1500):
        n = rng.randint(4, 14)
        pool = [rng.choice(words) for _ in range(n)] + [rng.choice(anatomy), rng.choice(findings)]
        rng.shuffle(pool)
        sentence = " ".join(pool)
        out.append(sentence[:1].upper() + sentence[1:] + rng.choice((".", ".", ",", ";", ":", "?")))
    for _ in range(600):
        chosen = rng.sample(labels, rng.randint(1, 3))
        think = " ".join(rng.sample(out, 2))
        sep = rng.choice((", ", ",", "; ", "\n"))
        out.append(f"{THINK_OPEN}{think}{THINK_CLOSE}\n{SOLUTION_OPEN}{sep.join(chosen)}{SOLUTION_CLOSE}")
    return out


def training_corpus(seed: int = 0) -> list[str]:
    """The generated corpus the tokenizers learn from (deterministic for a seed)."""
    rng = random.Random(seed)
    nih_only = (
        "Effusion",
        "Mass",
        "Nodule",
        "Infiltration",
        "Emphysema",
        "Fibrosis",
        "Hernia",
        "Pleural_Thickening",
    )
    labels = sorted({*CHEXPERT14, *NIH9, *NIH10, *nih_only})
    lines = [*_PROMPTS, ", ".join(labels), "\n".join(labels)]
    lines += [lab for lab in labels for _ in range(20)]
    lines += [lab.lower() for lab in labels for _ in range(5)]
    lines += [" ".join(t.split()) for t in (_ANATOMY, _FINDINGS, _WORDS)] * 5
    lines += ["user", "model", "assistant", "system", "You are a helpful assistant."] * 20
    lines += [" ".join(str(rng.randint(0, 1000)) for _ in range(8)) for _ in range(50)]
    lines += [" ".join(rng.choice("()[]{}<>-+*/=%#@&!?.,;:'\"_|") for _ in range(10)) for _ in range(50)]
    body = _sentences(rng, labels)
    lines += body
    # Paragraph breaks of every length the Gemma3 processor looks up.
    lines += [rng.choice(body) + run + rng.choice(body) for run in NEWLINE_RUNS for _ in range(50)]
    return lines


def _train_bpe(
    lines: list[str], vocab_size: int, *, byte_level: bool
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a BPE; return (vocab, merges) as `tokenizers` writes them."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # deterministic merges
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    if byte_level:
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        tok = Tokenizer(BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True))
        tok.normalizer = normalizers.Replace(" ", "▁")
        # Training only: keep merges inside a word ("▁word") and inside a newline run, as SentencePiece.
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("▁*[^▁\n]+|\n+|▁+"), behavior="isolated")
        alphabet = []
    trainer = BpeTrainer(
        vocab_size=vocab_size, show_progress=False, initial_alphabet=alphabet, min_frequency=2
    )
    tok.train_from_iterator(lines, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def _by_id(vocab: dict[str, int]) -> list[str]:
    return [p for p, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def build_gemma3_tokenizer(vocab_size: int = 2048, chat_template: str = GEMMA3_CHAT_TEMPLATE) -> Any:
    """A `GemmaTokenizer`: reserved tokens first (<pad>=0, <eos>=1, <bos>=2, ...), 256 byte-fallback tokens,
    the learnt pieces, then the turn/image control tokens and the tags as added tokens."""
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer

    n_fixed = len(GEMMA3_SPECIAL) + 256 + len(GEMMA3_CONTROL) + len(TAGS)
    learnt, merges = _train_bpe(training_corpus(), vocab_size - n_fixed, byte_level=False)
    fixed_tail = (*GEMMA3_CONTROL, *TAGS)
    pieces = list(GEMMA3_SPECIAL) + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [p for p in _by_id(learnt) if p not in pieces and p not in fixed_tail]
    # The newline runs as single tokens, whatever the corpus made of them.
    for left, right in (("\n", "\n"), ("\n\n", "\n"), ("\n\n", "\n\n")):
        if left + right not in pieces:
            pieces.append(left + right)
            merges.append((left, right))
    pieces += fixed_tail
    vocab = {p: i for i, p in enumerate(pieces)}
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
        add_bos_token=True,
        chat_template=chat_template,
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in GEMMA3_CONTROL])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    return tokenizer


def build_qwen_tokenizer(vocab_size: int = 2048, chat_template: str = QWEN2_5_VL_CHAT_TEMPLATE) -> Any:
    """A `Qwen2Tokenizer`: the learnt byte-level BPE, then Qwen's control tokens and the tags."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    n_fixed = len(QWEN_SPECIAL) + len(QWEN_EXTRA) + len(TAGS)
    learnt, merges = _train_bpe(training_corpus(), vocab_size - n_fixed, byte_level=True)
    fixed_tail = (*QWEN_SPECIAL, *QWEN_EXTRA, *TAGS)
    pieces = [p for p in _by_id(learnt) if p not in fixed_tail]
    vocab = {p: i for i, p in enumerate([*pieces, *fixed_tail])}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_template,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in (*QWEN_EXTRA, *TAGS)])
    return tokenizer
