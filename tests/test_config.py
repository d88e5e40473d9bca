"""The one config base: validation messages, serialisation, overrides, and flags derived from fields."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from concept_erase.config import Config, add_arguments, check_fraction, check_int, setting, values_from_args
from concept_erase.errors import InvalidConfigError


@dataclass
class Toy(Config):
    steps: int = setting(10, "training steps")
    gamma: float = setting(0.5, "a fraction", group="fractions")
    cap: int | None = setting(None, "optional cap")
    names: tuple[str, ...] = setting(("a",), "patterns")
    flag: bool = setting(True, "a switch")
    hidden: int = setting(0, "not on the command line", cli=False)

    def __post_init__(self) -> None:
        check_int(self, "steps")
        check_fraction(self, "gamma")


def test_validation_names_the_field_the_value_and_the_rule():
    with pytest.raises(InvalidConfigError, match=r"`steps` must be a positive integer but is 0\."):
        Toy(steps=0)
    with pytest.raises(InvalidConfigError, match=r"`gamma` must be in \(0, 1\] but is 1.5\."):
        Toy(gamma=1.5)
    with pytest.raises(InvalidConfigError, match=r"`steps` must be a positive integer but is True"):
        Toy(steps=True)  # a bool is not a count


def test_serialisation_and_overrides():
    toy = Toy(steps=3)
    assert Toy.from_dict({**toy.to_dict(), "from_a_newer_version": 1}) == toy
    assert toy.with_overrides(gamma=0.25).gamma == 0.25
    with pytest.raises(InvalidConfigError, match="Toy has no setting 'gama'; valid settings: steps, gamma"):
        toy.with_overrides(gama=0.25)
    with pytest.raises(InvalidConfigError, match="`gamma` must be in"):
        toy.with_overrides(gamma=2.0)  # overrides are validated too


def test_flags_are_derived_from_the_fields():
    parser = argparse.ArgumentParser()
    added = add_arguments(parser, Toy)
    assert added == {"steps", "gamma", "cap", "names", "flag"}
    assert "fractions" in parser.format_help() and "training steps" in parser.format_help()
    args = parser.parse_args(["--steps", "4", "--cap", "none", "--names", "x", "y", "--no-flag"])
    assert values_from_args(args, Toy) == {"steps": 4, "cap": None, "names": ("x", "y"), "flag": False}
    assert values_from_args(parser.parse_args([]), Toy) == {}  # flags not given are not settings
    with pytest.raises(SystemExit):
        parser.parse_args(["--steps", "four"])


def test_every_setting_has_help_and_a_flag():
    import dataclasses

    from concept_erase.evaluation import EvalConfig
    from concept_erase.evaluation.adversarial import AttackConfig
    from concept_erase.evaluation.relearning import RelearnConfig
    from concept_erase.methods import METHODS

    classes = {m.config_class for m in METHODS.values()} | {EvalConfig, AttackConfig, RelearnConfig}
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_erase_flags_come_from_the_method_configs():
    from concept_erase.cli import build_parser
    from concept_erase.config import values_from_args
    from concept_erase.methods import SemuConfig

    erase = build_parser(["erase"])
    args = erase.parse_args(["erase", "--out", "x", "--gamma", "0.5", "--clip-gradient", "none", "--no-project",
                             "--target-modules", "*attn2.to_k", "*attn2.to_v"])
    values = values_from_args(args, SemuConfig)
    assert values == {"gamma": 0.5, "clip_gradient": None, "project": False,
                      "target_modules": ("*attn2.to_k", "*attn2.to_v")}
    config = SemuConfig(**values)
    assert config.clip_gradient is None and SemuConfig.from_dict({**config.to_dict(), "new_field": 1}) == config
