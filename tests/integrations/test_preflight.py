"""Config time: ``gradalign.enabled=true`` alone turns on what GradAlign needs (dynamic sampling,
multiplier q) and every unsupported combination is refused naming field and value, before
upstream's script starts Ray. Runs on upstream's own recipe where a NeMo RL checkout is found
(NEMO_RL_ROOT), else on a recipe of the same shape."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemo_gradalign.config import ConfigError
from nemo_gradalign.integrations.nemo_rl.config import read_gradalign
from nemo_gradalign.recipe_files import apply_overrides, load_yaml_with_defaults
from nemo_gradalign.integrations.nemo_rl.preflight import preflight, with_default_block

ROOT = Path(os.environ.get("NEMO_RL_ROOT", "/opt/nemo-rl"))
UPSTREAM_RECIPE = ROOT / "examples" / "configs" / "grpo_math_1B_megatron.yaml"
SHAPE = {  # upstream's defaults for every key the checks read (grpo_math_1B_megatron.yaml)
    "grpo": {"num_prompts_per_step": 32, "num_generations_per_prompt": 16, "use_dynamic_sampling": False,
             "batch_multiplier": 1, "normalize_rewards": True, "use_leave_one_out_baseline": True,
             "adv_estimator": {"name": "grpo", "normalize_rewards": True, "use_leave_one_out_baseline": True,
                               "minus_baseline": True},
             "async_grpo": {"enabled": False}},
    "policy": {"precision": "bfloat16", "dtensor_cfg": {"enabled": False},
               "generation": {"temperature": 1.0, "top_p": 1.0, "top_k": None},
               "megatron_cfg": {"enabled": True, "sequence_parallel": False, "context_parallel_size": 1,
                                "expert_model_parallel_size": 1, "expert_tensor_parallel_size": 1,
                                "fp8_cfg": {"enabled": False}}},
    "data": {"use_multiple_dataloader": False, "num_workers": 1}, "env": {}, "data_plane": {"enabled": False},
    "loss_fn": {"reference_policy_kl_penalty": 0.01, "token_level_loss": True, "use_kl_in_reward": False,
                "positive_example_nll_weight": 0.0},
}


def _resolvers():
    for name, fn in (("add", lambda a, b: a + b), ("mul", lambda a, b: a * b),
                     ("div", lambda a, b: a / b), ("max", lambda a, b: max(a, b))):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def recipe(*overrides: str) -> dict:
    """The recipe as run_grpo.py resolves it: upstream's file when present, our default block,
    Hydra overrides in struct mode."""
    if UPSTREAM_RECIPE.is_file():
        _resolvers()
        cfg = with_default_block(load_yaml_with_defaults)(UPSTREAM_RECIPE)
    else:
        cfg = with_default_block(lambda _: OmegaConf.create(SHAPE))(None)
    return OmegaConf.to_container(apply_overrides(cfg, list(overrides)), resolve=True)


def test_the_flag_alone_runs_the_memory_schedule(capsys):
    """The flag's default has plain GRPO's generation: no dynamic sampling, multiplier 1."""
    cfg = recipe("gradalign.enabled=true")
    extra = preflight(cfg)
    assert extra == ["++data.num_workers=0"]
    assert cfg["data"]["num_workers"] == 0 and not cfg["grpo"]["use_dynamic_sampling"]
    assert cfg["grpo"]["batch_multiplier"] == 1
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "data.num_workers=0 (gradalign.schedule=memory" in printed[0]
    assert preflight(recipe()) == []  # flag off: upstream's recipe untouched


def test_a_dapo_recipe_selects_at_its_own_dynamic_sampling(capsys):
    """DAPO (dynamic sampling on, an integral batch_multiplier q): the flag alone runs the step
    schedule with the recipe's q, setting nothing; the trusted mix keeps the memory schedule."""
    dapo = ("grpo.use_dynamic_sampling=true", "grpo.batch_multiplier=3")
    cfg = recipe("gradalign.enabled=true", *dapo)
    assert preflight(cfg) == []
    flag = read_gradalign(cfg)
    assert flag.schedule == "step" and flag.selection_ratio == 3
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "DAPO, grpo.batch_multiplier=3) is where GradAlign selects" in printed[0]
    mix = recipe("gradalign.enabled=true", "gradalign.steer=false", *dapo)
    assert read_gradalign(mix).schedule == "memory" and preflight(mix) == ["++data.num_workers=0"]
    named = recipe("gradalign.enabled=true", "gradalign.schedule=memory", *dapo)  # a schedule named: as before
    with pytest.raises(ConfigError, match="grpo.use_dynamic_sampling=true: gradalign.schedule=memory"):
        preflight(named)
    with pytest.raises(ConfigError, match="grpo.batch_multiplier=1.5: gradalign.schedule=memory"):  # q not whole
        preflight(recipe("gradalign.enabled=true", "grpo.use_dynamic_sampling=true", "grpo.batch_multiplier=1.5"))


def test_the_step_schedule_sets_dynamic_sampling_and_the_multiplier(capsys):
    cfg = recipe("gradalign.enabled=true", "gradalign.schedule=step")
    extra = preflight(cfg)
    assert extra == ["++grpo.use_dynamic_sampling=true", "++grpo.batch_multiplier=4"]
    assert cfg["grpo"]["use_dynamic_sampling"] is True and cfg["grpo"]["batch_multiplier"] == 4
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "grpo.use_dynamic_sampling=true and grpo.batch_multiplier=4" in printed[0]
    assert preflight(recipe("gradalign.enabled=true", "gradalign.schedule=step", "grpo.use_dynamic_sampling=true",
                            "grpo.batch_multiplier=4")) == []  # already consistent: nothing set


@pytest.mark.parametrize("overrides, named", [
    (["gradalign.schedule=step", "gradalign.selection_ratio=4", "grpo.use_dynamic_sampling=true",
      "grpo.batch_multiplier=3"],
     ["grpo.use_dynamic_sampling=true", "grpo.batch_multiplier=3", "gradalign.selection_ratio=4"]),
    (["gradalign.schedule=step", "grpo.batch_multiplier=2"], ["grpo.batch_multiplier=2", "gradalign.selection_ratio=4"]),
    (["grpo.batch_multiplier=2"], ["grpo.batch_multiplier=2", "gradalign.schedule=memory"]),
    (["policy.megatron_cfg.expert_model_parallel_size=2", "policy.megatron_cfg.context_parallel_size=4"],
     ["policy.megatron_cfg.expert_tensor_parallel_size=1", "context_parallel_size=4"]),
    (["policy.megatron_cfg.expert_model_parallel_size=2", "++policy.megatron_cfg.tensor_model_parallel_size=4"],
     ["policy.megatron_cfg.expert_tensor_parallel_size=1", "whole model replicas"]),
    (["policy.megatron_cfg.expert_model_parallel_size=2", "++policy.megatron_cfg.moe_token_dispatcher_type=flex"],
     ["policy.megatron_cfg.moe_token_dispatcher_type='flex'"]),
    (["policy.megatron_cfg.expert_model_parallel_size=2", "++policy.megatron_cfg.moe_router_load_balancing_type=aux_loss"],
     ["policy.megatron_cfg.moe_router_load_balancing_type='aux_loss'"]),
    (["policy.megatron_cfg.expert_model_parallel_size=2", "++policy.router_replay.enabled=true"],
     ["policy.router_replay.enabled=True"]),
    (["++policy.quant_cfg=NVFP4_MLP_WEIGHT_ONLY_CFG"], ["policy.quant_cfg='NVFP4_MLP_WEIGHT_ONLY_CFG'"]),
    (["policy.megatron_cfg.fp8_cfg.enabled=true"], ["policy.megatron_cfg.fp8_cfg.enabled=True"]),
    (["++gradalign.validation.g_from_update=true"], ["gradalign.validation.g_from_update=true"]),
    (["++policy.megatron_cfg.peft.enabled=true"], ["policy.megatron_cfg.peft.enabled=True", "LoRA"]),
    (["++data.default.processor=vlm_hf_data_processor"], ["data.default.processor='vlm_hf_data_processor'",
                                                          "run_vlm_grpo.py"]),
    (["++env.should_use_nemo_gym=true"], ["env.should_use_nemo_gym=True"]),
    (["data.use_multiple_dataloader=true"], ["data.use_multiple_dataloader=True"]),
    (["grpo.async_grpo.enabled=true", "gradalign.schedule=step"], ["grpo.async_grpo.enabled=True",
                                                                  "gradalign.schedule='step'"]),
    (["++data_plane.enabled=true", "gradalign.schedule=step"], ["data_plane.enabled=True",
                                                                 "gradalign.schedule='step'", "grpo_train_sync"]),
    (["++data_plane.enabled=true", "++gradalign.validation.train_share=0"], ["data_plane.enabled=True",
                                                                             "train_share=0"]),
    (["++async_rl.sampler.name=in_order"], ["async_rl=<set>", "run_grpo_single_controller.py"]),
    (["policy.megatron_cfg.enabled=false", "policy.dtensor_cfg.enabled=true"],
     ["policy.megatron_cfg.enabled=False", "policy.dtensor_cfg.enabled=True"]),
    (["gradalign.schedule=round"], ["gradalign.schedule='round'"]),
    (["policy.precision=float16"], ["policy.precision='float16'"]),
    (["policy.generation.top_k=50"], ["policy.generation.top_k=50"]),
    (["policy.generation.top_p=0.9"], ["policy.generation.top_p=0.9"]),
    (["grpo.adv_estimator.name=gdpo"], ["grpo.adv_estimator.name='gdpo'"]),
    (["grpo.adv_estimator.minus_baseline=false"], ["grpo.adv_estimator.minus_baseline=false"]),
    (["loss_fn.positive_example_nll_weight=0.1"], ["loss_fn.positive_example_nll_weight=0.1"]),
    (["loss_fn.use_kl_in_reward=true"], ["loss_fn.use_kl_in_reward=True"]),
    (["gradalign.schedule=step", "++gradalign.validation.train_share=0.25"], ["validation.train_share=0.25"]),
    (["gradalign.aggregation=sequence_mean"], ["gradalign.aggregation='sequence_mean'",
                                               "loss_fn.token_level_loss=True"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and "=" in v[0] and "selection_ratio" not in " ".join(v) else None)
def test_refused_at_config_time_naming_field_and_value(overrides, named):
    with pytest.raises(ConfigError) as err:
        preflight(recipe("gradalign.enabled=true", *overrides))
    for text in named:
        assert text in str(err.value)


@pytest.mark.parametrize("layout", [
    ["policy.megatron_cfg.context_parallel_size=2", "++policy.sequence_packing.enabled=true"],
    ["policy.megatron_cfg.sequence_parallel=true", "++policy.megatron_cfg.tensor_model_parallel_size=2"],
], ids=["CP2", "TP2-SP"])
def test_layouts_scored_exactly_are_accepted(layout):
    """Context and sequence parallelism are scored exactly (tests/engine/test_oracle.py): the
    recipe runs as it is, with only the flag's two settings added."""
    assert preflight(recipe("gradalign.enabled=true", *layout)) == ["++data.num_workers=0"]


def test_scored_aggregation_follows_the_trainers_loss():
    """loss_fn.token_level_loss=false trains per-sequence means (also GSPO's): scored the same."""
    from nemo_gradalign.integrations.nemo_rl.config import read_gradalign, scoring_loss

    for level, want in (("true", "token_mean"), ("false", "sequence_mean")):
        cfg = recipe("gradalign.enabled=true", f"loss_fn.token_level_loss={level}")
        assert scoring_loss(cfg, read_gradalign(cfg))["aggregation"] == want
    cfg = recipe("gradalign.enabled=true", "loss_fn.token_level_loss=false", "gradalign.aggregation=sequence_mean")
    assert scoring_loss(cfg, read_gradalign(cfg))["aggregation"] == "sequence_mean"


# -- contract: the real entry, from a NeMo RL checkout, fails fast and starts nothing ----------

def _entry(*args: str, timeout: float = 120):
    if not (ROOT / "nemo_rl").is_dir():
        pytest.skip(f"no NeMo RL checkout at {ROOT} (set NEMO_RL_ROOT)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [*filter(None, [os.environ.get("NEMO_RL_SHIM")]), str(ROOT), str(Path(__file__).parents[2]),
         os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nemo_gradalign.integrations.nemo_rl", "--config",
                           str(UPSTREAM_RECIPE), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


@pytest.mark.parametrize("override, named", [
    ("policy.megatron_cfg.fp8_cfg.enabled=true", "policy.megatron_cfg.fp8_cfg.enabled=True"),
    ("++env.should_use_nemo_gym=true", "env.should_use_nemo_gym=True"),
    ("grpo.batch_multiplier=3", "grpo.batch_multiplier=3"),
])
def test_real_entry_refuses_before_anything_starts(override, named):
    pytest.importorskip("nemo_rl.utils.config", reason="NeMo RL source not on PYTHONPATH")
    proc, seconds = _entry("gradalign.enabled=true", override)
    assert proc.returncode != 0 and named in proc.stderr, proc.stderr[-2000:]
    assert "nothing was started" in proc.stderr and "Ray" not in proc.stdout
    assert seconds < 15, f"refusal took {seconds:.1f}s"


def test_vision_and_audio_recipes_run_the_trusted_mix_through_upstreams_vlm_script():
    """steer=false runs them (only the loader is replaced; its rows are the recipe's own), started with
    run_vlm_grpo.py as upstream starts them; the steered flag cannot score images or audio."""
    pytest.importorskip("nemo_rl.utils.config", reason="NeMo RL source not on PYTHONPATH")
    from nemo_gradalign.integrations.nemo_rl.__main__ import upstream_script
    from nemo_gradalign.integrations.nemo_rl.preflight import resolved_recipe

    vlm = ("gradalign.enabled=true", "gradalign.steer=false", "++data.default.processor=vlm_hf_data_processor")
    assert preflight(recipe(*vlm)) == ["++data.num_workers=0"]
    assert upstream_script(recipe(*vlm)) == "run_vlm_grpo.py" and upstream_script(recipe()) == "run_grpo.py"
    with pytest.raises(ConfigError, match="gradalign.validation.dataset='/data/t.jsonl': a named trusted set is read as text"):
        preflight(recipe(*vlm, "++gradalign.validation.dataset=/data/t.jsonl"))
    upstream_vlm = ROOT / "examples" / "configs" / "vlm_grpo_3B_megatron.yaml"
    if not upstream_vlm.is_file():
        pytest.skip("upstream's VLM recipe is not in this checkout")
    real = resolved_recipe(str(ROOT / "examples" / "run_grpo.py"), ["--config", str(upstream_vlm), *vlm[:2]])
    assert upstream_script(real) == "run_vlm_grpo.py" and preflight(real) == ["++data.num_workers=0"]
    # run_vlm_grpo.py binds `setup` when it is run, after the entry has wrapped it
    probe = ("import runpy, nemo_rl.algorithms.grpo as grpo\n"
             "from nemo_gradalign.integrations.nemo_rl.entry import install_all\n"
             f"install_all(); ns = runpy.run_path({str(ROOT / 'examples' / 'run_vlm_grpo.py')!r}, run_name='probe')\n"
             "print(ns['setup'] is grpo.setup and hasattr(grpo.setup, '__gradalign_original__'))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip().endswith("True"), proc.stderr[-2000:]
