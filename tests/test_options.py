"""Option values: `--set KEY=VALUE` overrides (typed, recorded, in the run id) and type checks of every recipe
and method option before any work starts."""
import pytest

import harness.device as device_mod
from datasets.synth import ensure_synthetic
from harness.cli import main
from harness.errors import HarnessError
from harness.options import overrides_tag, parse_sets
from harness.recipe import Recipe, build_recipe
from harness.records import read_record
from methods import build_method, method_class

IMAGES = 12


def sets(*items, method="m2ist"):
    return parse_sets(items, method_class(method).Config, Recipe, f"method '{method}'")


def test_set_reads_yaml_values_into_method_and_recipe():
    method, recipe = sets("method.double_layernorm=false", "lr_encoder=1.0e-4", "recipe.epochs=3", "form=parallel")
    assert method == {"double_layernorm": False, "form": "parallel"}
    assert recipe == {"lr_encoder": 1e-4, "epochs": 3}
    assert sets("lr=1e-4")[1] == {"lr": 1e-4}  # YAML reads 1e-4 as a string; a float field takes it
    assert sets("targets_language=[query, key]", method="lora")[0] == {"targets_language": ["query", "key"]}
    assert sets("vision_layers=null")[0] == {"vision_layers": None}


@pytest.mark.parametrize("item, message", [
    ("lr=fast", "recipe option lr must be float, got 'fast'"),
    ("epochs='3'", "recipe option epochs must be int, got '3'"),
    ("recipe.amp=1", "recipe option amp must be bool"),
    ("method.double_layernorm=yes please", "method 'm2ist' option double_layernorm must be bool"),
    ("warp=9", "warp is neither a method option"),
    ("method.warp=9", "unknown method 'm2ist' option(s) warp"),
    ("model.lr=1", "KEY is method.NAME, recipe.NAME or a bare NAME"),
    ("double_layernorm", "expected KEY=VALUE"),
    ("bottleneck=[1, 2", "is not a YAML value"),
])
def test_set_errors_are_one_line(item, message):
    with pytest.raises(HarnessError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        sets(item)


def test_targets_as_a_string_is_refused_not_split_into_letters():
    with pytest.raises(HarnessError, match="targets_language must be list"):
        build_method("lora", {"targets_language": "query"})


def test_recipe_and_config_file_values_are_type_checked():
    for bad, message in (({"lr": "fast"}, "lr must be float"), ({"epochs": "3"}, "epochs must be int"),
                         ({"runtime": "quick"}, "runtime must be one of optimized, released"),
                         ({"frozen_chunk": 2.5}, "frozen_chunk must be int | null")):
        with pytest.raises(HarnessError, match=message.replace("|", r"\|")):
            build_recipe("tiny", "unc", bad)
    assert build_recipe("tiny", "unc", {"lr": "1e-3", "epochs": 3}).lr == 1e-3


def test_overrides_tag_is_a_safe_file_name():
    assert overrides_tag({"double_layernorm": False}, {}) == "double_layernorm-false"
    assert overrides_tag({"targets_language": ["query", "key"]}, {"lr_encoder": 1e-4}).startswith(
        "lr_encoder-0.0001_targets_language-querykey@")  # characters dropped: the exact overrides' hash follows
    assert "/" not in overrides_tag({}, {"runtime": "../x"})
    assert overrides_tag({}, {}) is None


@pytest.mark.parametrize("a, b", [
    ({"select_layers_language": [1, 1]}, {"select_layers_language": [11]}),  # brackets, commas, spaces dropped
    ({"targets_language": ["query", "key"]}, {"targets_language": ["querykey"]}),
    ({"instance": "x_bottleneck-1"}, {"instance": "x", "bottleneck": 1}),  # a value that reads as two parts
])
def test_overrides_that_read_alike_never_share_a_run_id(a, b):
    """Under --skip-done a shared run id let the second variant delete the first one's checkpoint and record."""
    tag_a, tag_b = overrides_tag(a, {}), overrides_tag(b, {})
    assert tag_a != tag_b
    assert "@" in tag_a and tag_a.split("@")[0].startswith(next(iter(sorted(a))))  # still readable
    assert overrides_tag(a, {}) == tag_a  # stable: a rerun finds its own record


def test_overrides_or_tags_too_long_for_a_file_name_are_refused(capsys):
    from harness.cli import main

    with pytest.raises(HarnessError, match="too long for a file name"):
        overrides_tag({"targets_language": ["query"] * 40}, {})
    assert main(["run", "--method", "frozen", "--dataset", "unc", "--tag", "x" * 300]) == 2
    err = capsys.readouterr().err
    assert "--tag 'xxxx" in err and "use up to 160" in err and "File name too long" not in err


def test_run_with_set_records_the_override_and_tags_the_run_id(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    ensure_synthetic(cache, seed=13, images=IMAGES)
    monkeypatch.setattr(device_mod, "DEFAULT_CACHE", cache)
    args = ["run", "--method", "m2ist", "--dataset", "unc", "--random-init", "--synthetic-images", str(IMAGES),
            "--device", "cpu", "--batch-size", "8", "--max-steps", "1", "--epochs", "1",
            "--output", str(tmp_path / "rec"), "--work-dir", str(tmp_path / "work")]
    assert main(args + ["--set", "method.double_layernorm=false", "--set", "lr_encoder=2.0e-5"]) == 0
    assert main(args) == 0  # the default beside it: another run id, nothing overwritten
    variant = read_record(tmp_path / "rec" / "unc_m2ist_tiny_lr_encoder-2.0e-05_double_layernorm-false.json")
    default = read_record(tmp_path / "rec" / "unc_m2ist_tiny.json")
    assert variant["overrides"] == {"method": {"double_layernorm": False}, "recipe": {"lr_encoder": 2e-5}}
    assert variant["method_config"]["double_layernorm"] is False and variant["recipe"]["lr_encoder"] == 2e-5
    assert default["method_config"]["double_layernorm"] is True and default["overrides"] == {"method": {}, "recipe": {}}
    assert variant["config_hash"] != default["config_hash"]
    capsys.readouterr()
    assert main(args + ["--set", "lr=fast"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: recipe option lr must be float") and err.count("\n") == 1


def test_a_seed_other_than_the_recipe_s_is_part_of_the_run_id():
    import argparse

    from harness.cli import _overrides

    def tag(seed):
        return _overrides(argparse.Namespace(method="m2ist", set=[], tag=None, config=None, seed=seed))[4]
    assert tag(None) is None and tag(13) is None and tag(14) == "seed14"
