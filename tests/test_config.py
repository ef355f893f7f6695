import pytest

from intraq.config import RunConfig, apply_overrides, config_hash, from_dict, to_dict
from intraq.errors import UserInputError
from intraq.profiles import PROFILES, get_profile


def test_overrides_parse_by_field_type():
    cfg = apply_overrides(
        RunConfig(),
        ["synth.num_images=256", "finetune.lr_steps=3,5", "synth.mdc=false", "data.root=/x", "finetune.lr=1e-5"],
    )
    assert cfg.synth.num_images == 256 and cfg.finetune.lr_steps == (3, 5)
    assert cfg.synth.mdc is False and cfg.data.root == "/x" and cfg.finetune.lr == 1e-5


def test_overrides_do_not_mutate_the_input():
    cfg = RunConfig()
    apply_overrides(cfg, ["synth.num_images=7"])
    assert cfg.synth.num_images == 5120


@pytest.mark.parametrize(
    "override, message",
    [
        ("synth.nope=1", "unknown field 'nope'"),
        ("nosection.x=1", "no config section"),
        ("synth.num_images=abc", "expected a int"),
        ("synth.mdc=maybe", "expected true or false"),
        ("synth.num_images", "section.field=value"),
        ("synth=1", "names a section"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(UserInputError, match=message):
        apply_overrides(RunConfig(), [override])


def test_hash_ignores_locations_but_not_numbers():
    base = RunConfig()
    assert config_hash(base) == config_hash(apply_overrides(base, ["data.root=/somewhere/else"]))
    assert config_hash(base) != config_hash(apply_overrides(base, ["synth.iterations=999"]))


def test_round_trip_through_dict():
    cfg = get_profile("cifar10-cpu")
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


def test_profiles_exist_and_unknown_profile_lists_them():
    assert {"smoke", "cifar10", "cifar10-cpu", "imagenet"} <= set(PROFILES.names())
    known = ("known: cifar10, cifar10-cpu, cifar10-lr1e-5, cifar10-lr1e-5-256-cut, imagenet, imagenet-official-script, "
             "smoke")
    with pytest.raises(UserInputError, match=known):
        get_profile("cifar100")


def test_cifar10_profile_keeps_official_hyperparameters():
    cfg = get_profile("cifar10")
    assert (cfg.synth.num_images, cfg.synth.batch_size, cfg.synth.iterations) == (5120, 256, 1000)
    assert (cfg.finetune.epochs, cfg.finetune.iters_per_epoch, cfg.finetune.batch_size) == (151, 200, 256)
    assert cfg.finetune.lr == 1e-4 and cfg.finetune.lr_steps == (20, 40, 60)
    assert (cfg.finetune.temperature, cfg.finetune.alpha) == (20.0, 20.0)


def _flat(cfg) -> dict:
    return {f"{section}.{k}": v for section, fields in to_dict(cfg).items() if isinstance(fields, dict)
            for k, v in fields.items()}


@pytest.mark.parametrize("profile", ["cifar10-cpu", "cifar10-lr1e-5", "cifar10-lr1e-5-256-cut"])
def test_cifar10_variants_list_exactly_what_they_change(profile):
    from intraq.profiles import profile_deviations

    official, reduced = _flat(get_profile("cifar10")), _flat(get_profile(profile))
    changed = {k for k in official if official[k] != reduced[k]}
    assert changed == set(profile_deviations(profile))
    assert profile_deviations("cifar10") == {} and profile_deviations("imagenet-official-script") == {}


def test_imagenet_lists_its_margins_against_the_official_script():
    """T1: the official ImageNet script's margins switch MDC and SIL off; `imagenet` turns them on and says so."""
    from intraq.profiles import CODE_CHOICES, code_deviations, profile_deviations
    from intraq.synthesis.settings import effective_synth_settings

    official, ours = get_profile("imagenet-official-script"), get_profile("imagenet")
    flat_official, flat_ours = _flat(official), _flat(ours)
    changed = {k for k in flat_official if flat_official[k] != flat_ours[k]}
    # the official script's DeepInversion snapshot is one of the code choices every report lists, not a margin
    assert changed - set(CODE_CHOICES) == set(profile_deviations("imagenet")) == {"synth.variant"}
    assert "synth.di_snapshot" in code_deviations(ours) and "synth.di_snapshot" not in code_deviations(official)
    from intraq.synthesis.deepinversion import effective_config

    assert effective_config(official, "imagenet", 224).snapshot == "after-step"
    assert effective_config(ours, "imagenet", 224).snapshot == "best"
    script = effective_synth_settings(official, "imagenet")
    assert (script.target_pro, script.margin_low, script.margin_up) == (1.0, 0.0, 2.0)
    assert script.mdc_inert and script.sil_inert
    paper = effective_synth_settings(ours, "imagenet")
    assert (paper.target_pro, paper.margin_low, paper.margin_up) == (0.95, 0.05, 0.8)
    assert not paper.mdc_inert and not paper.sil_inert


def test_every_profile_names_where_it_differs_from_the_official_code():
    from intraq.config import apply_overrides
    from intraq.profiles import PROFILES, code_deviations

    for name in PROFILES.names():
        assert "T11" in code_deviations(get_profile(name))["quant.act_ema"]
        if name != "imagenet-official-script":  # which runs DeepInversion's ImageNet script's snapshot
            assert "lowest-loss iterate" in code_deviations(get_profile(name))["synth.di_snapshot"]
    official = ["quant.act_ema=official", "synth.di_snapshot=after-step"]
    assert code_deviations(apply_overrides(get_profile("cifar10"), official)) == {}
