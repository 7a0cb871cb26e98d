"""The demo's emulated pretraining builds the same examples from the same data wherever it lies."""

import shutil

from chexrl.data.loaders import load_dataset
from trainer.pretrain import pretrain_examples


def test_pretraining_targets_do_not_depend_on_the_data_folder(synth_mimic_dir, tmp_path):
    # the demo run in another checkout (another absolute path) must train the same base model
    moved = shutil.copytree(synth_mimic_dir, tmp_path / "elsewhere" / "mimic")
    here, there = load_dataset(f"mimic:{synth_mimic_dir}")[:12], load_dataset(f"mimic:{moved}")[:12]
    assert [s.image_path for s in here] != [s.image_path for s in there]
    a, b = pretrain_examples(here, seed=3), pretrain_examples(there, seed=3)
    assert [e.completion for e in a] == [e.completion for e in b]
    assert [e.messages for e in a] == [e.messages for e in b]
    # and the seed still matters (the targets are drawn, not fixed)
    assert [e.completion for e in pretrain_examples(here, seed=4)] != [e.completion for e in a]
