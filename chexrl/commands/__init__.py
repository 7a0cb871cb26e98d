"""Command groups of the `chexrl` CLI; every module here registers its commands on chexrl.cli apps."""
