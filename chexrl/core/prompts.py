"""The prompt library: the paper's nine prompt variants (Table 1) and its four SFT target formats (Sec. 4.2).

Pure data and pure functions: no I/O, no tokenizer. `build_messages` returns HF-style chat messages with
the image content part first; chexrl/traces/render.py renders them through a model's chat template and
`to_openai_messages` turns them into an OpenAI chat request body.

Every prompt lists the schema's allowed labels verbatim and demands exactly one ``<think>...</think>``
followed by one ``<solution>label, label</solution>`` (what chexrl.core.parsing accepts).

Names are stable snake_case ids:
  prompt variants  reasoning_a (baseline), narrative, self_check, hypothesis, reasoning_b .. reasoning_f
  SFT formats      only_label, free_reasoning, reasoning_narrative, reasoning_a
An SFT format trains with its own student prompt (`SFTFormat.prompt`), so the same name works for
`build_messages`. `DEFAULT_PROMPT` ("free_reasoning") is the prompt for GRPO and evaluation: the paper
ran GRPO on the Free Reasoning SFT checkpoint, and a policy must be prompted as it was fine-tuned.

Only Label renders as an empty think block, ``<think></think>\\n<solution>...</solution>``: the parser
demands a think block, and an empty one is the only rationale-free completion that still parses.
"""

from __future__ import annotations

from dataclasses import dataclass

from chexrl.core.schemas import NO_FINDING, TRAINING_SCHEMA, get_schema

SYSTEM_RADIOLOGIST = (
    "You are an expert thoracic radiologist reading a single frontal or lateral chest radiograph. "
    "You classify the study into a fixed set of findings labels. You are careful, systematic and "
    "calibrated: you call a finding only when the image supports it, and you do not overlook subtle "
    "abnormalities."
)


@dataclass(frozen=True)
class PromptVariant:
    """One instruction strategy: the reasoning it asks for; the label list and output contract are added."""

    name: str  # stable id, e.g. "reasoning_a"
    title: str  # as in the paper, e.g. "Reasoning A"
    cue: str  # the paper's key design cue (Table 1), or the format's one-line description
    instruction: str  # how to reason inside <think>; the allowed labels and format rules are appended
    system: str = SYSTEM_RADIOLOGIST


@dataclass(frozen=True)
class SFTFormat:
    """An SFT target format: what the assistant turn of a training example looks like."""

    name: str
    title: str
    description: str
    prompt: str  # the PromptVariant the student is trained (and later prompted) with
    teacher_style: str  # what a teacher model is told about the shape of the trace to write


# ---------------------------------------------------------------------------------------------------------
# Label definitions (Reasoning D) -- CheXpert's conventions as a radiologist would state them.

LABEL_DEFINITIONS: dict[str, str] = {
    "Atelectasis": "volume loss with increased density: linear or plate-like bands, segmental or lobar "
    "collapse with displaced fissures, elevated hemidiaphragm, hilar or mediastinal shift",
    "Cardiomegaly": "enlarged cardiac silhouette, cardiothoracic ratio above 0.5 on a PA film; be cautious "
    "on AP or supine films, which magnify the heart",
    "Consolidation": "airspace filling replacing alveolar air, often with air bronchograms, effacing vessels "
    "and adjacent borders (silhouette sign)",
    "Edema": "pulmonary edema: vascular redistribution, indistinct hilar vessels, peribronchial cuffing, "
    "Kerley B lines, perihilar or bilateral airspace opacities",
    "Enlarged Cardiomediastinum": "widened mediastinum or abnormal cardiomediastinal contour (aortic, hilar "
    "or mediastinal enlargement), including cases where the heart itself is not clearly enlarged",
    "Fracture": "cortical break, step-off or callus of a rib, clavicle, scapula, humerus or vertebra, "
    "acute or healing",
    "Lung Lesion": "focal nodule or mass, solitary or multiple, including cavitating lesions",
    "Lung Opacity": "any area of increased lung density (the parent finding of consolidation, edema, "
    "atelectasis, pneumonia and lesions), including ill-defined or non-specific opacities",
    "No Finding": "no pathology among the other labels; support devices may still be present",
    "Pleural Effusion": "fluid in the pleural space: blunted costophrenic angle, meniscus sign, layering "
    "density on supine films, fluid tracking into fissures",
    "Pleural Other": "pleural abnormality other than effusion: pleural thickening, plaques, calcification, "
    "fibrothorax",
    "Pneumonia": "airspace opacity whose appearance suggests infection (focal, lobar or multifocal "
    "consolidation); the radiograph can only be compatible with, not prove, infection",
    "Pneumothorax": "air in the pleural space: visible visceral pleural line with absent lung markings "
    "beyond it, deep sulcus sign on supine films",
    "Support Devices": "any medical device: endotracheal or tracheostomy tube, enteric tube, central "
    "venous catheter or PICC, chest tube, pacemaker or defibrillator, valve prosthesis, monitoring leads",
}

REASONING_A_STEPS: tuple[str, ...] = (
    "Technique and quality: projection (PA/AP/lateral), rotation, inspiration, penetration.",
    "Support devices: tubes, lines, catheters, pacemakers; note the position of each tip.",
    "Airway and trachea: midline or deviated, tracheal and main bronchial lumen.",
    "Mediastinum: width and contour, aortic knob, any mediastinal mass or shift.",
    "Heart size and cardiomediastinal contour: cardiothoracic ratio, chamber enlargement.",
    "Hila: size, density and position; vascular congestion.",
    "Lungs zone by zone (upper, middle, lower; right then left): opacity, consolidation, volume loss, "
    "nodules or masses, interstitial or edema pattern.",
    "Pleura and costophrenic angles: effusion, thickening, plaques.",
    "Pneumothorax check: apices and lateral margins for a visceral pleural line; deep sulcus sign.",
    "Diaphragm: contour, height, free subdiaphragmatic air.",
    "Bones: ribs, clavicles, scapulae, spine and humeri for fractures or lesions.",
    "Soft tissues: chest wall, breasts, neck, subcutaneous emphysema.",
)


def _numbered(items: tuple[str, ...]) -> str:
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


PROMPT_VARIANTS: tuple[PromptVariant, ...] = (
    PromptVariant(
        "reasoning_a",
        "Reasoning A",
        "Structured 12-step checklist with strict format (baseline)",
        "Inside <think>, perform this mandatory 12-step chest radiograph analysis, in order, one "
        "numbered line per step, stating what you see (normal or abnormal) at each step:\n"
        + _numbered(REASONING_A_STEPS)
        + "\nThen, still inside <think>, derive the labels: map each abnormal step to the allowed labels "
        "and state why each chosen label applies.",
    ),
    PromptVariant(
        "narrative",
        "Reasoning Narrative",
        "Free-form expert narrative with evidence aggregation",
        "Inside <think>, write the reasoning as a radiologist dictating a report in prose: describe the "
        "image as you survey it, gather the evidence for and against each abnormality you consider, "
        "and aggregate it into an impression. Weigh subtle signs together rather than in isolation.",
    ),
    PromptVariant(
        "self_check",
        "Reasoning Self-Check",
        "Region-wise scan then explicit verification pass",
        "Inside <think>, first scan region by region (devices, mediastinum and heart, hila, each lung "
        "zone, pleura and costophrenic angles, diaphragm, bones, soft tissues) and list candidate "
        "findings. Then do an explicit verification pass: for every candidate, check the supporting "
        "sign again and keep or drop it; for every label you did not choose, confirm its key sign is "
        "absent.",
    ),
    PromptVariant(
        "hypothesis",
        "Reasoning Hypothesis",
        "Hypothesis-driven comparison of candidate findings",
        "Inside <think>, state the leading hypotheses suggested by the first look at the image, then "
        "compare competing candidate findings against each other (for example consolidation vs "
        "atelectasis, effusion vs pleural thickening, cardiomegaly vs enlarged cardiomediastinum), "
        "citing the sign that favours one over the other, and keep the hypotheses the image supports.",
    ),
    PromptVariant(
        "reasoning_b",
        "Reasoning B",
        "Zonal lung review with pathology differentiation",
        "Inside <think>, review each lung in three zones (upper, middle, lower; right then left), plus "
        "the retrocardiac region and the apices. For every abnormal zone, differentiate the pathology: "
        "airspace vs interstitial vs nodular, volume loss vs expansion, and which label it supports. "
        "Then comment on the heart, mediastinum, pleura, bones and devices.",
    ),
    PromptVariant(
        "reasoning_c",
        "Reasoning C",
        "Evidence-heavy report with label-confidence matrix",
        "Inside <think>, write a detailed findings section citing the image evidence for each "
        "observation, then a label-confidence matrix with one line per allowed label in the form "
        "'Label: present|absent (confidence 0.0-1.0) - evidence'. Choose the labels marked present.",
    ),
    PromptVariant(
        "reasoning_d",
        "Reasoning D",
        "Definition-guided labeling with strict criteria",
        "Inside <think>, apply these definitions strictly and call a label only when its criteria are "
        "met:\n__DEFINITIONS__\nFor each label you choose, name the criterion that is met.",
    ),
    PromptVariant(
        "reasoning_e",
        "Reasoning E",
        "Second-look pass over anatomic blind spots",
        "Inside <think>, read the film systematically, then take a deliberate second look at the "
        "classic blind spots: lung apices, retrocardiac region, hila, behind the diaphragmatic domes "
        "and costophrenic recesses, lateral pleural margins, bones and below the diaphragm. Revise "
        "your findings after the second look.",
    ),
    PromptVariant(
        "reasoning_f",
        "Reasoning F",
        "Differential diagnosis required for each abnormality",
        "Inside <think>, describe each abnormality you see and give a short differential diagnosis for "
        "it (the two or three most likely causes), then say which allowed label the abnormality "
        "corresponds to.",
    ),
)

# Student prompts that exist only as SFT formats (not in the Table 1 ablation).
_SFT_ONLY_PROMPTS: tuple[PromptVariant, ...] = (
    PromptVariant(
        "free_reasoning",
        "Free Reasoning",
        "Concise analysis followed by labels",
        "Inside <think>, give a concise analysis of the radiograph in a few sentences: the key positive "
        "findings with their supporting signs and the pertinent negatives.",
    ),
    PromptVariant(
        "only_label",
        "Only Label",
        "Direct label output with no rationale",
        "Give the labels directly, with no rationale: leave the think block empty, as <think></think>.",
    ),
)

PROMPTS: dict[str, PromptVariant] = {p.name: p for p in (*PROMPT_VARIANTS, *_SFT_ONLY_PROMPTS)}
VARIANT_NAMES: tuple[str, ...] = tuple(p.name for p in PROMPT_VARIANTS)

SFT_FORMATS: dict[str, SFTFormat] = {
    f.name: f
    for f in (
        SFTFormat(
            "only_label",
            "Only Label",
            "Direct label output with no rationale; the think block is empty.",
            "only_label",
            "Leave the think block empty: write exactly <think></think> and then the solution block.",
        ),
        SFTFormat(
            "free_reasoning",
            "Free Reasoning",
            "Concise analysis (a few sentences) followed by the labels.",
            "free_reasoning",
            "Inside <think>, write a concise analysis of 2 to 5 sentences: the key positive findings "
            "with the image sign supporting each, and the pertinent negatives.",
        ),
        SFTFormat(
            "reasoning_narrative",
            "Reasoning Narrative",
            "Free-form radiologic narrative with evidence aggregation.",
            "narrative",
            "Inside <think>, write a flowing radiologist's narrative of one or two paragraphs: survey "
            "the image, weigh the evidence for and against each candidate finding, and close with an "
            "impression.",
        ),
        SFTFormat(
            "reasoning_a",
            "Reasoning A",
            "Structured 12-step checklist, then label derivation.",
            "reasoning_a",
            "Inside <think>, write the 12 numbered steps below, one line each, then a line deriving "
            "the labels:\n" + _numbered(REASONING_A_STEPS),
        ),
    )
}
FORMAT_NAMES: tuple[str, ...] = tuple(SFT_FORMATS)

DEFAULT_PROMPT = "free_reasoning"
DEFAULT_FORMAT = "free_reasoning"


def get_prompt(name: str) -> PromptVariant:
    """A prompt variant or an SFT format's student prompt, by name."""
    if name in PROMPTS:
        return PROMPTS[name]
    if name in SFT_FORMATS:
        return PROMPTS[SFT_FORMATS[name].prompt]
    known = sorted(set(PROMPTS) | set(SFT_FORMATS))
    raise ValueError(f"unknown prompt {name!r}; expected one of {known}")


def get_format(name: str) -> SFTFormat:
    try:
        return SFT_FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown SFT format {name!r}; expected one of {list(SFT_FORMATS)}") from None


def label_block(labels: tuple[str, ...]) -> str:
    """The allowed-label list, one per line, spelled exactly as the schema does."""
    return "\n".join(f"- {label}" for label in labels)


def output_contract(labels: tuple[str, ...]) -> str:
    """The rules every prompt ends with: allowed labels and the exact output format."""
    example = ", ".join(labels[:2])
    rules = [
        "Allowed labels (use only these, spelled exactly as written):",
        label_block(labels),
        "",
        "Output format (strict):",
        "- Write exactly one <think>...</think> block, then exactly one <solution>...</solution> block.",
        f"- Inside <solution>, list every label that applies, separated by commas, e.g. "
        f"<solution>{example}</solution>.",
        "- Write nothing before <think> and nothing after </solution>.",
    ]
    if NO_FINDING in labels:
        rules.append(
            f'- Use "{NO_FINDING}" only when no other pathology label applies '
            "(support devices may still be listed with it)."
        )
    return "\n".join(rules)


def instruction_text(prompt_name: str, *, schema: str = TRAINING_SCHEMA) -> str:
    """The full user instruction of a prompt: its reasoning strategy plus the output contract."""
    prompt = get_prompt(prompt_name)
    labels = get_schema(schema).labels
    body = prompt.instruction
    if "__DEFINITIONS__" in body:
        defs = "\n".join(f"- {lab}: {LABEL_DEFINITIONS[lab]}" for lab in labels)
        body = body.replace("__DEFINITIONS__", defs)
    return f"Classify this chest X-ray.\n\n{body}\n\n{output_contract(labels)}"


def build_messages(prompt_name: str = DEFAULT_PROMPT, *, schema: str = TRAINING_SCHEMA) -> list[dict]:
    """HF-style chat messages for one image: a system turn and a user turn whose first part is the image.

    >>> m = build_messages("reasoning_a")
    >>> [x["role"] for x in m], m[1]["content"][0]
    (['system', 'user'], {'type': 'image'})
    """
    prompt = get_prompt(prompt_name)
    return [
        {"role": "system", "content": [{"type": "text", "text": prompt.system}]},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": instruction_text(prompt_name, schema=schema)},
            ],
        },
    ]


def to_openai_messages(messages: list[dict], image_url: str) -> list[dict]:
    """The same messages as an OpenAI chat request: each image part becomes an `image_url` part.

    >>> to_openai_messages([{"role": "user", "content": [{"type": "image"}]}], "data:x")[0]["content"]
    [{'type': 'image_url', 'image_url': {'url': 'data:x'}}]
    """
    out = []
    for message in messages:
        parts = []
        for part in message["content"]:
            if part["type"] == "image":
                parts.append({"type": "image_url", "image_url": {"url": image_url}})
            else:
                parts.append(dict(part))
        out.append({"role": message["role"], "content": parts})
    return out


def teacher_instruction(labels: tuple[str, ...], format_name: str, *, schema: str = TRAINING_SCHEMA) -> str:
    """The teacher's user text: the gold labels, the trace style, and 'reason as if you had not seen them'.

    The paper's teacher (Gemini 2.5) was 'provided with ground-truth labels but instructed to produce
    rationales as if reasoning independently'.
    """
    fmt = get_format(format_name)
    allowed = get_schema(schema).labels
    gold = ", ".join(labels)
    return (
        "You are writing a training example that teaches a student model to read chest X-rays.\n"
        f"The ground-truth labels for this image, confirmed by expert review, are: {gold}.\n\n"
        "Write the reasoning a radiologist would produce while reading this image, as if you had NOT "
        "been told the labels: describe the image evidence that leads to each of these labels and the "
        "pertinent negatives, and never mention that labels were given to you. Do not invent findings "
        "that contradict the labels.\n\n"
        f"Trace style ({fmt.title}): {fmt.teacher_style}\n\n"
        f"{output_contract(allowed)}\n"
        f"- The <solution> block must contain exactly these labels and no others: {gold}."
    )
