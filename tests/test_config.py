"""Checks that live in the config models (chexrl/config.py)."""

import pytest
from pydantic import ValidationError

from chexrl.config import ChexrlConfig, GRPOConfig, load_config


@pytest.mark.parametrize(
    ("given", "missing"), [("eval_id_data", "eval_ood_data"), ("eval_ood_data", "eval_id_data")]
)
def test_evaluation_sets_come_together(given, missing):
    with pytest.raises(ValidationError) as err:
        GRPOConfig(**{given: "mimic:/data:valid"})
    message = str(err.value)
    assert "evaluation during training needs both grpo.eval_id_data and grpo.eval_ood_data" in message
    assert f"grpo.{given} is set, grpo.{missing} is not" in message


def test_evaluation_sets_both_or_neither_are_fine():
    both = GRPOConfig(eval_id_data="chexpert:/a:valid", eval_ood_data="nih:/b:test")
    assert (both.eval_id_data, both.eval_ood_data) == ("chexpert:/a:valid", "nih:/b:test")
    neither = ChexrlConfig().grpo
    assert neither.eval_id_data is None and neither.eval_ood_data is None


def test_a_yaml_file_with_one_evaluation_set_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("grpo:\n  eval_ood_data: nih:/b:test\n")
    with pytest.raises(ValueError, match=r"grpo\.eval_ood_data is set, grpo\.eval_id_data is not"):
        load_config(path)
