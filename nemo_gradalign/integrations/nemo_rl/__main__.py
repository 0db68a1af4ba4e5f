"""python -m nemo_gradalign.integrations.nemo_rl --config <recipe> [overrides]

Checks the recipe first (preflight.py: every refusal before Ray or a GPU starts), installs
GradAlign into the NeMo RL found on the path (the container's checkout) and runs that checkout's
own example script with the same arguments plus the overrides preflight chose: ``run_grpo.py``,
``run_vlm_grpo.py`` for the vision and audio recipes (``data.default.processor:
vlm_hf_data_processor``), or ``nemo_gym/run_grpo_nemo_gym.py`` for the NeMo-Gym ones
(``env.should_use_nemo_gym``), as upstream runs them. All bind ``setup`` from
``nemo_rl.algorithms.grpo`` when they are run, after GradAlign has wrapped it.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    try:
        import nemo_rl
    except ImportError:
        raise SystemExit("NeMo RL is not importable: run inside NVIDIA's NeMo RL container, or put a "
                         "NeMo RL source checkout on PYTHONPATH") from None

    from nemo_gradalign.config import ConfigError
    from nemo_gradalign.integrations.nemo_rl.preflight import preflight, resolved_recipe

    examples = Path(nemo_rl.__file__).resolve().parents[1] / "examples"
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        recipe = resolved_recipe(str(_script(examples, "run_grpo.py")), args)
        script = _script(examples, upstream_script(recipe))
        extra = preflight(recipe)
    except ConfigError as err:
        raise SystemExit(f"GradAlign refuses this configuration (nothing was started):\n{err}") from None

    from nemo_gradalign.integrations.nemo_rl.entry import install_all

    install_all()
    sys.argv = [str(script), *args, *extra]
    runpy.run_path(str(script), run_name="__main__")


def upstream_script(recipe: dict) -> str:
    """The example script upstream starts this recipe with."""
    from nemo_gradalign.integrations.nemo_rl.config_access import is_vision_or_audio
    from nemo_gradalign.integrations.nemo_rl.nemo_gym import is_nemo_gym

    if is_nemo_gym(recipe):
        return "nemo_gym/run_grpo_nemo_gym.py"
    return "run_vlm_grpo.py" if is_vision_or_audio(recipe) else "run_grpo.py"


def _script(examples: Path, name: str) -> Path:
    script = examples / name
    if not script.is_file():
        raise SystemExit(f"NeMo RL's examples/{name} not found in {examples}; run from a NeMo RL source "
                         "checkout (the NVIDIA container has one)")
    return script


if __name__ == "__main__":
    main()
