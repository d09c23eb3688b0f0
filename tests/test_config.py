"""Config dataclasses: defaults <- recipe <- flags, unknown keys are errors, types coerced,
bounds and cross-field checks in one validate(), inline shared sections."""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from w2s.config import (
    build_config,
    coerce,
    config_class,
    config_to_dict,
    derive,
    flat_fields,
    load_recipe,
    option,
    section,
    validate,
)
from w2s.errors import W2SError
from w2s.methods import METHODS
from w2s.methods.sections import Judging, Lora, Runtime, Sampling, StageTrain, Sweep

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Opt:
    lr: float = option(1e-5, "learning rate")
    epochs: int = option(2, "epochs")


@dataclass
class Cfg:
    weak: str = option("gpt2", "weak model")
    seeds: list[int] = option([0], "seeds")
    loss: str = option("xent", "loss", choices=["xent", "logconf", "product"])
    lora: bool = option(False, "use LoRA")
    limit: int | None = option(None, "max examples")
    train: Opt = section(Opt, "optimiser")


def test_defaults_recipe_then_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("weak: gpt2-medium\nloss: logconf\ntrain:\n  lr: 3.0e-5\n")
    cfg = build_config(Cfg, recipe, {"lr": "1e-4", "seeds": "0,1,2", "lora": True})
    assert cfg.weak == "gpt2-medium"        # from the recipe
    assert cfg.loss == "logconf"
    assert cfg.train.lr == pytest.approx(1e-4)   # the flag beats the recipe
    assert cfg.train.epochs == 2            # default kept
    assert cfg.seeds == [0, 1, 2]
    assert cfg.lora is True
    assert cfg.limit is None


def test_mutable_defaults_are_not_shared():
    a, b = Cfg(), Cfg()
    a.seeds.append(5)
    assert b.seeds == [0]


def test_unknown_recipe_key_names_closest(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("waek: gpt2\n")
    with pytest.raises(W2SError, match=r"unknown key 'waek'.*did you mean 'weak'"):
        build_config(Cfg, recipe)


def test_unknown_nested_key(tmp_path):
    with pytest.raises(W2SError, match=r"unknown key 'train.lrr'.*'lr'"):
        build_config(Cfg, {"train": {"lrr": 1}})


def test_unknown_override_names_flag():
    with pytest.raises(W2SError, match=r"unknown option 'lern'"):
        build_config(Cfg, None, {"lern": "1"})


def test_bad_type_and_choice():
    with pytest.raises(W2SError, match=r"'train.epochs' expects int"):
        build_config(Cfg, {"train": {"epochs": "two"}})
    with pytest.raises(W2SError, match=r"must be one of .*did you mean 'logconf'"):
        build_config(Cfg, {"loss": "logcof"})
    with pytest.raises(W2SError, match=r"section"):
        build_config(Cfg, {"train": 3})


def test_coerce_values():
    assert coerce("3", int, "k") == 3
    assert coerce("1e3", int, "k") == 1000
    assert coerce("none", int | None, "k") is None
    assert coerce("yes", bool, "k") is True
    assert coerce("a, b", list[str], "k") == ["a", "b"]
    assert coerce(0.5, float, "k") == 0.5
    with pytest.raises(W2SError):
        coerce("2.5", int, "k")
    with pytest.raises(W2SError):
        coerce(True, int, "k")


def test_flag_names_collide_get_prefixed():
    @dataclass
    class A:
        lr: float = option(1.0, "a")

    @dataclass
    class Two:
        lr: float = option(2.0, "top-level lr")
        inner: A = section(A, "inner")

    flags = {f.key: f.flag for f in flat_fields(Two)}
    assert flags == {"lr": "--lr", "inner.lr": "--inner-lr"}
    cfg = build_config(Two, None, {"inner_lr": "5"})
    assert cfg.inner.lr == 5.0 and cfg.lr == 2.0


def test_a_prefixed_section_always_names_its_flags():
    """section(..., prefixed=True): --arm-lr even where --lr alone would be unique (w2s
    search's GenARM training: a bare --lr there would read as the search's own)."""
    @dataclass
    class A:
        lr: float = option(1.0, "a")

    @dataclass
    class One:
        arm: A = section(A, "the reward model's training", prefixed=True)
        plain: A = section(A, "unprefixed, but colliding")

    assert {f.key: f.flag for f in flat_fields(One)} == {"arm.lr": "--arm-lr",
                                                         "plain.lr": "--plain-lr"}

    @dataclass
    class Solo:
        arm: A = section(A, "alone", prefixed=True)

    assert [f.flag for f in flat_fields(Solo)] == ["--arm-lr"]
    assert build_config(Solo, None, {"arm_lr": "3"}).arm.lr == 3.0


def test_saved_config_is_a_valid_recipe(tmp_path):
    cfg = build_config(Cfg, {"weak": "opt-125m", "train": {"lr": 2e-5}})
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump({"method": "x", **config_to_dict(cfg)}))
    again = build_config(Cfg, saved)
    assert again == cfg


def test_bad_recipe_file(tmp_path):
    with pytest.raises(W2SError, match="not found"):
        build_config(Cfg, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("weak: [unclosed\n")
    with pytest.raises(W2SError, match="not valid YAML"):
        build_config(Cfg, bad)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- a\n- b\n")
    with pytest.raises(W2SError, match="must be a mapping"):
        build_config(Cfg, notmap)


def test_stage_train_derives_a_section_with_other_defaults():
    import dataclasses

    from w2s.config import build_config, flat_fields, option, section
    from w2s.methods.sections import StageTrain, stage_train

    Fast = stage_train("Fast", "a stage", module=__name__, lr=1e-3, epochs=None,
                       help={"lr": "the fast lr"})
    assert [f.name for f in dataclasses.fields(Fast)] == [f.name for f in
                                                          dataclasses.fields(StageTrain)]
    assert Fast().lr == 1e-3 and Fast().batch_size == 32 and Fast.__doc__ == "a stage"

    @dataclasses.dataclass
    class Cfg:
        name: str = option("x", "a name")
        train: Fast = section(Fast, "training")

    leaf = {f.key: f for f in flat_fields(Cfg)}["train.lr"]
    assert (leaf.default, leaf.help, leaf.flag) == (1e-3, "the fast lr", "--lr")
    cfg = build_config(Cfg, {"train": {"batch_size": 8}}, {"lr": "2e-3"})
    config = cfg.train.train_config(seed=7, default_epochs=2.0, max_steps=5)
    assert (config.lr, config.epochs, config.batch_size, config.seed, config.max_steps) == (
        2e-3, 2.0, 8, 7, 5)
    with pytest.raises(ValueError, match="default_epochs"):
        cfg.train.train_config(seed=0)
    with pytest.raises(TypeError, match="no field"):
        stage_train("Bad", "", module=__name__, learning_rate=1.0)


# ---- bounds and validate() ---------------------------------------------------------------------

@dataclass
class Bounded:
    lr: float = option(1e-3, "learning rate", above=0)
    ratio: float = option(0.5, "a fraction", min=0, max=1)
    size: int = option(4, "a size", min=1)
    temp: float = option(1.0, "a temperature", min=0)
    limit: float = option(math.inf, "a cap; inf = none", above=0, allow_inf=True)
    shift: float = option(0.0, "any finite number")
    seeds: list[int] = option([0], "seeds", min=0)
    cap: int | None = option(None, "optional, at least 2 when set", min=2)
    train: StageTrain = section(StageTrain, "a training stage")


@pytest.mark.parametrize("key, value, message", [
    ("lr", "nan", "--lr must be > 0 and finite, got nan"),
    ("lr", "inf", "--lr must be > 0 and finite, got inf"),
    ("lr", "0", "--lr must be > 0 and finite, got 0.0"),
    ("lr", "-1e-3", "--lr must be > 0 and finite, got -0.001"),
    ("ratio", "1.5", "--ratio must be in [0, 1], got 1.5"),
    ("ratio", "nan", "--ratio must be in [0, 1], got nan"),
    ("size", "0", "--size must be at least 1, got 0"),
    ("temp", "-0.1", "--temp must be >= 0 and finite, got -0.1"),
    ("limit", "nan", "--limit must be > 0 and not NaN, got nan"),
    ("shift", "-inf", "--shift must be finite, got -inf"),
    ("seeds", "0,-1", "--seeds must be at least 0, got -1"),
    ("cap", "1", "--cap must be at least 2, got 1"),
    ("train.lr", "nan", "--train-lr (config key 'train.lr') must be > 0 and finite, got nan"),
    ("train.epochs", "0", "--epochs (config key 'train.epochs') must be > 0 and finite, got 0.0"),
    ("train.batch_size", "0", "--batch-size (config key 'train.batch_size') must be at least 1"),
    ("train.micro_batch_size", "0", "must be at least 1, got 0"),
    ("train.warmup_ratio", "1", "must be in [0, 1), got 1.0"),
    ("train.weight_decay", "-0.1", "must be >= 0 and finite, got -0.1"),
    ("train.max_grad_norm", "0", "must be > 0 and finite, got 0.0"),
    ("train.checkpoint_every", "-1", "must be at least 0, got -1"),
])
def test_out_of_bounds_is_one_line_from_a_recipe_a_flag_and_python(key, value, message):
    """The same value is refused, with the same sentence, wherever it comes from: a recipe
    (YAML values), a flag (text), a config built and changed in Python."""
    section_name, _, leaf = key.rpartition(".")
    typed = coerce(value, {f.key: f.type for f in flat_fields(Bounded)}[key], key)
    recipe = {section_name: {leaf: typed}} if section_name else {key: typed}
    hand_built = build_config(Bounded)
    setattr(getattr(hand_built, section_name) if section_name else hand_built, leaf, typed)
    for attempt in (lambda: build_config(Bounded, recipe),
                    lambda: build_config(Bounded, None, {key: value}),
                    lambda: validate(hand_built)):
        with pytest.raises(W2SError) as caught:
            attempt()
        text = str(caught.value)
        assert message in text and "\n" not in text, text


def test_in_bounds_values_pass_and_none_is_not_bounded():
    cfg = build_config(Bounded, {"ratio": 0, "size": 1, "temp": 0, "limit": "inf", "cap": None,
                                 "train": {"lr": None, "max_grad_norm": None, "warmup_ratio": 0}},
                       {"lr": "1e-9", "shift": "-3"})
    assert cfg.limit == math.inf and cfg.cap is None and cfg.train.lr is None
    assert validate(cfg) is cfg


def test_validate_checks_types_choices_and_sections_of_a_hand_built_config():
    with pytest.raises(W2SError, match=r"^--size expects int, got '4'$"):
        validate(Bounded(size="4"))
    with pytest.raises(W2SError, match=r"^--lr expects float, got True$"):
        validate(Bounded(lr=True))
    with pytest.raises(W2SError, match=r"^--seeds expects a list of int"):
        validate(Bounded(seeds=[0, 1.5]))
    with pytest.raises(W2SError, match=r"config key 'loss' must be one of .*did you mean"):
        validate(Cfg(loss="logcof"))
    with pytest.raises(W2SError, match=r"config key 'train' is a section: give a StageTrain"):
        validate(Bounded(train={"lr": 1e-3}))
    with pytest.raises(W2SError, match=r"config key 'train.optimizer' must be one of"):
        validate(Bounded(train=StageTrain(optimizer="adagrad")))
    assert validate(Bounded(lr=1)).lr == 1  # an int is a fine float


def test_validate_runs_the_checks_of_sections_and_of_the_class_after_the_bounds():
    calls = []

    @dataclass
    class Part:
        a: int = option(1, "a", min=0)

        def check(self):
            calls.append("part")
            if self.a == 3:
                raise W2SError("a must not be 3")

    @dataclass
    class Whole:
        b: int = option(1, "b")
        part: Part = section(Part, "a part")

        def check(self):
            calls.append("whole")
            if self.b < self.part.a:
                raise W2SError("b must be at least part.a")

    validate(Whole())
    assert calls == ["part", "whole"]  # innermost first
    with pytest.raises(W2SError, match="a must not be 3"):
        build_config(Whole, {"part": {"a": 3}, "b": 5})
    with pytest.raises(W2SError, match="b must be at least part.a"):
        build_config(Whole, None, {"b": "0"})
    calls.clear()
    with pytest.raises(W2SError, match="at least 0"):  # the bounds come first
        validate(Whole(part=Part(a=-1)))
    assert calls == []


def test_message_overrides_the_generic_sentence():
    @dataclass
    class C:
        w: int = option(4, "beams", min=1, message="CBS needs W >= 1 (--w)")

    with pytest.raises(W2SError, match=r"^CBS needs W >= 1 \(--w\), got 0$"):
        build_config(C, None, {"w": "0"})


def test_option_refuses_two_lower_bounds():
    with pytest.raises(TypeError, match="min or above"):
        option(1.0, "x", min=0, above=0)


# ---- inline sections ---------------------------------------------------------------------------


@config_class
class Inline:
    weak: str = option("gpt2", "weak model")
    lora: Lora = section(Lora, "adapters", inline=True, drop=("lora_targets",))
    sampling: Sampling = section(derive(Sampling, temperature=0.7), "sampling", inline=True)
    runtime: Runtime = section(Runtime, "runtime", inline=True, drop=("device",))
    train: StageTrain = section(StageTrain, "training")


def test_inline_section_fields_are_plain_fields_of_the_parent():
    names = [f.name for f in dataclasses.fields(Inline)]
    assert names == ["weak", "lora_r", "lora_alpha", "max_new_tokens", "temperature", "top_k",
                     "top_p", "dtype", "seed", "run_dir", "train"]
    cfg = Inline(seed=3, temperature=0.2)           # the constructor takes them by name
    assert cfg.seed == 3 and cfg.runtime.seed == 3 and cfg.sampling.temperature == 0.2
    assert Inline().temperature == 0.7              # derive()'s default
    assert dataclasses.replace(cfg, seed=4).runtime.seed == 4
    flags = {f.key: f.flag for f in flat_fields(Inline)}
    assert flags["seed"] == "--seed" and flags["lora_r"] == "--lora-r"
    assert flags["train.lr"] == "--lr"


def test_an_inline_view_reads_and_writes_the_parent_and_has_the_section_methods():
    cfg = Inline()
    view = cfg.runtime
    cfg.seed = 7
    assert view.seed == 7                           # live, not a copy
    view.dtype = "bf16"
    assert cfg.dtype == "bf16"
    assert isinstance(view, Runtime) and dataclasses.is_dataclass(view)
    assert [f.name for f in dataclasses.fields(view)] == ["dtype", "seed", "run_dir"]
    assert dataclasses.asdict(view) == {"dtype": "bf16", "seed": 7, "run_dir": None}
    assert repr(view) == "Runtime(dtype='bf16', seed=7, run_dir=None)"
    with pytest.raises(AttributeError, match="leaves it out"):
        assert view.device is None                  # dropped: no silent class default
    with pytest.raises(AttributeError, match="no field"):
        view.devcie = "cpu"
    cfg.lora = Lora(lora_r=4, lora_alpha=8, lora_targets="all-linear")  # copies what it has
    assert (cfg.lora_r, cfg.lora_alpha) == (4, 8)
    sampling = cfg.sampling.sampling_config(batch_size=3, seed=cfg.seed)
    assert (sampling.temperature, sampling.max_new_tokens, sampling.batch_size,
            sampling.seed) == (0.7, 128, 3, 7)


def test_inline_sections_round_trip_through_config_yaml(tmp_path):
    cfg = build_config(Inline, {"seed": 2, "lora_r": 16, "train": {"lr": 1e-4}},
                       {"temperature": "0"})
    saved = config_to_dict(cfg)
    assert "runtime" not in saved and "sampling" not in saved and saved["seed"] == 2
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"method": "x", **saved}, sort_keys=False))
    assert build_config(Inline, path) == cfg
    with pytest.raises(W2SError, match=r"unknown key 'runtime'"):  # no nested spelling
        build_config(Inline, {"runtime": {"seed": 1}})


def test_inline_bounds_and_section_misuse():
    with pytest.raises(W2SError, match=r"^--top-p must be in \(0, 1\], got 0.0$"):
        build_config(Inline, None, {"top_p": "0"})
    with pytest.raises(W2SError, match=r"^--temperature must be >= 0 and finite, got nan$"):
        validate(Inline(temperature=math.nan))

    @dataclass
    class Plain:
        runtime: Runtime = section(Runtime, "runtime", inline=True)

    with pytest.raises(TypeError, match="@config_class"):
        flat_fields(Plain)
    with pytest.raises(TypeError, match="already has"):
        @config_class
        class Twice:
            seed: int = option(0, "seed")
            runtime: Runtime = section(Runtime, "runtime", inline=True)
    with pytest.raises(TypeError, match="no field"):
        section(Runtime, "runtime", inline=True, drop=("gpu",))


# ---- the methods' configs ----------------------------------------------------------------------

SAVED_KEYS = {  # config.yaml's top-level keys before the shared sections: they must not move
    "generalize": "aux_alpha chain chain_folds chain_labels device dtype eval_batch_size "
                  "gen_epochs gen_finetune "
                  "gen_finetune_models launcher "
                  "lora_alpha lora_r loss max_ctx mode n_boot n_test n_train run_dir seed seeds "
                  "strong strong_train task warmup_frac weak weak_train workers world",
    "search": "api_max_retries api_rate_limit api_timeout api_workers base base_prompt bon_n "
              "chat decoder device dtype ed_aligned ed_alpha eos_at_cut "
              "eft_beta genarm_alpha genarm_beta_r genarm_init genarm_max_len genarm_model "
              "genarm_n genarm_split genarm_task genarm_train "
              "jailbreak_alpha jailbreak_safe jailbreak_unsafe judge judge_reads "
              "judge_batch_size k l max_new_tokens n_prompts prefix_words prompt_batch run_dir "
              "proxy_alpha score_batch_size seed shard small_prompt split task temperature top_k top_p "
              "tuned untuned w",
    "wspo": "backend beta chat dry_run dtype gamma gen_batch_size granularity judge lora_alpha "
            "lora_r max_len max_new_tokens mode n_eval n_train run_dir samples_per_prompt "
            "save_model score_batch_size seed single_turn strong strong_train task temperature "
            "top_k top_p weak weak_aligned weak_dpo",
    "macpo": "beta dpo dpo_reference dtype eval_teachers filter_k filter_rule ftx generation "
             "gold_judge iterations judge lora_alpha lora_r lora_targets max_len max_perplexity "
             "n_test n_train prompt_format quantize run_dir seed sft skip_empty strong "
             "strong_neg_epochs student_sft_answers task weak",
    "weak-label": "beta chat confidence_threshold confidence_weighting dtype gen_batch_size judge "
                  "judge_batch_size lora_alpha lora_r max_len max_new_tokens mode n_bins n_eval "
                  "n_labelled n_unlabelled run_dir samples_per_prompt score_batch_size seed strong "
                  "strong_beta strong_dpo task temperature top_k top_p weak weak_dpo",
    "expo": "aligned alphas chat device dtype from_run gen_batch_size judge judge_batch_size "
            "max_new_tokens n_prompts run_dir samples_per_prompt save_best seed select_by sft "
            "task temperature top_k top_p",
    "reason": "beta chat dtype flip_confidence full_weak_baseline gen_batch_size icl_shots "
              "iterations lora_alpha lora_r lora_targets max_len max_new_tokens max_pairs "
              "min_confidence mode n_boot n_samples n_test n_w2s n_weak_train pairs pref run_dir "
              "sample_temperature score_batch_size seed selection stage1_data stage2 strong "
              "strong_sft task weak weak_sft weak_shots weak_supervision",
    "deception": "alpha beta bootstrap_via conf_threshold conflict device dpo_preference dtype eos "
                 "filter_helpful "
                 "eval_batch_size headline helpful_task launcher lora_alpha lora_r max_ctx mode "
                 "n_helpful n_test n_train objective run_dir seed seeds simpo_gamma single_turn strong task "
                 "test_pairs "
                 "train weak weak_labels workers",
    "compare": "beta ceiling_dpo chat dry_run dtype entries expo_alphas gen_batch_size judge "
               "judge_batch_size lora_alpha lora_r max_len max_new_tokens methods mode n_eval "
               "n_train plots run_dir samples_per_prompt score_batch_size seed sft strong task "
               "temperature top_k top_p weak weak_aligned weak_dpo",
}

SECTIONS = {"generalize": {"lora": Lora, "sweep": Sweep, "runtime": Runtime},
            "search": {"sampling": Sampling, "judging": Judging, "runtime": Runtime},
            "wspo": {"lora": Lora, "judging": Judging, "sampling": Sampling, "runtime": Runtime},
            "macpo": {"lora": Lora, "judging": Judging, "runtime": Runtime},
            "deception": {"lora": Lora, "sweep": Sweep, "runtime": Runtime},
            "weak-label": {"lora": Lora, "judging": Judging, "sampling": Sampling,
                           "runtime": Runtime},
            "expo": {"judging": Judging, "sampling": Sampling, "runtime": Runtime},
            "reason": {"lora": Lora, "runtime": Runtime},
            "compare": {"lora": Lora, "judging": Judging, "sampling": Sampling,
                        "runtime": Runtime}}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_run_saves_the_same_keys_as_before_and_reloads(method, tmp_path):
    from w2s.runs import Run

    spec = METHODS[method]
    cfg = spec.config()
    cfg.seed = 5
    run = Run.start(method, cfg, run_dir=tmp_path / "run")   # what every method's run() writes
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert set(saved) - {"method"} == set(SAVED_KEYS[method].split())
    assert build_config(spec.config, run.path / "config.yaml") == cfg
    for name, section_cls in SECTIONS[method].items():
        view = getattr(cfg, name)
        assert isinstance(view, section_cls)
        for f in dataclasses.fields(view):
            assert getattr(view, f.name) == getattr(cfg, f.name)


def _recipes():
    for method in sorted(METHODS):  # recipes/<name>/ (a hyphen in the name: an underscore)
        folder = ROOT / "recipes" / method.replace("-", "_")
        lab = METHODS[method].lab   # the lab leg is optional
        paths = sorted(folder.glob("*.yaml")) + (
            [ROOT / "recipes" / "lab" / lab.recipe] if lab else [])
        for path in paths:
            yield pytest.param(method, path, id=str(path.relative_to(ROOT / "recipes")))


@pytest.mark.parametrize("method, path", list(_recipes()))
def test_every_recipe_builds_and_validates_for_its_method(method, path):
    config_cls = METHODS[method].config
    cfg = build_config(config_cls, path)
    assert validate(cfg) is cfg
    saved = config_to_dict(cfg)
    for key, value in load_recipe(path).items():  # every key lands where the recipe put it
        assert key in saved
        if isinstance(value, dict):
            assert set(value) <= set(saved[key])
    assert build_config(config_cls, saved) == cfg


def test_the_recipes_cover_every_method():
    methods = [p.values[0] for p in _recipes()]
    assert set(methods) == set(METHODS)
    # the lab's (where the method has a lab leg) and at least one more
    assert all(methods.count(m) >= 1 + bool(METHODS[m].lab) for m in METHODS)


@pytest.mark.parametrize("method, field_values, message", [
    ("generalize", {"aux_alpha": math.nan}, "--aux-alpha must be in [0, 1], got nan"),
    ("generalize", {"n_train": 1}, "--n-train must be at least 2, got 1"),
    ("wspo", {"gamma": math.inf}, "--gamma must be > 0 and finite, got inf"),
    ("wspo", {"beta": 0.0}, "--beta must be > 0 and finite, got 0.0"),
    ("macpo", {"iterations": 0}, "--iterations must be at least 1, got 0"),
    ("macpo", {"ftx": -0.5}, "--ftx must be >= 0 and finite, got -0.5"),
    ("deception", {"alpha": -1.0}, "--alpha must be >= 0 and finite, got -1.0"),
    ("deception", {"conf_threshold": 0.3}, "--conf-threshold must be in [0.5, 1), got 0.3"),
])
def test_the_python_api_goes_through_validate(method, field_values, message):
    """A hand-built config given to the method's own validation (what run(cfg) calls first) is
    refused with the CLI's sentence, before any model is resolved."""
    from w2s.methods.deception.config import plan_experiments as deception_plan
    from w2s.methods.generalize.config import plan_experiments as generalize_plan
    from w2s.methods.macpo.config import check_config
    from w2s.methods.wspo.config import validate as wspo_validate

    check = {"generalize": generalize_plan, "wspo": wspo_validate, "macpo": check_config,
             "deception": deception_plan}[method]
    with pytest.raises(W2SError) as caught:
        check(METHODS[method].config(**field_values))
    assert str(caught.value).startswith(message)


def test_shared_constants_match_the_modules_they_mirror():
    """config.py stays torch-free by spelling out these lists; they must not drift."""
    from w2s.launch import LAUNCHERS as launchers
    from w2s.methods.macpo.config import BACKENDS
    from w2s.methods.sections import LAUNCHERS, OPTIMIZERS, PRECISIONS, SCHEDULERS
    from w2s.models.generate import BACKENDS as backends
    from w2s.train import config as train_config

    assert (OPTIMIZERS, SCHEDULERS, PRECISIONS) == (train_config.OPTIMIZERS,
                                                    train_config.SCHEDULERS,
                                                    train_config.PRECISIONS)
    assert LAUNCHERS == launchers and BACKENDS == backends


def test_sampling_section_converts_to_the_generate_layers_config():
    from w2s.methods.macpo.config import MACPOConfig, sampling
    from w2s.methods.wspo.config import WSPOConfig
    from w2s.methods.wspo.config import sampling as wspo_sampling
    from w2s.models.generate import SamplingConfig

    wspo = WSPOConfig(temperature=0.3, top_k=5, gen_batch_size=4, seed=2)
    assert wspo_sampling(wspo) == SamplingConfig(max_new_tokens=512, temperature=0.3, top_k=5,
                                                 top_p=1.0, batch_size=4, seed=2)
    gen = MACPOConfig().generation
    assert sampling(gen, 3) == SamplingConfig(max_new_tokens=512, temperature=0.95, top_k=0,
                                              top_p=0.7, batch_size=16, seed=3)
    with pytest.raises(W2SError, match="top_p"):  # the generate layer's own check still runs
        dataclasses.replace(gen, top_p=0.0).sampling_config()


def test_a_message_override_is_for_the_range_not_for_nan():
    from w2s.methods.macpo.config import MACPOConfig

    with pytest.raises(W2SError, match=r"keeps nothing at or below 1.*got 0.5$"):
        validate(MACPOConfig(filter_rule="threshold", max_perplexity=0.5))
    with pytest.raises(W2SError, match=r"^--max-perplexity must be > 1 and finite, got inf$"):
        validate(MACPOConfig(filter_rule="threshold", max_perplexity=math.inf))
