"""python -m nemo_gradalign.integrations.nemo_rl --config <recipe> [overrides]

Checks the recipe first (preflight.py: every refusal before Ray or a GPU starts), installs
GradAlign into the NeMo RL found on the path (the container's checkout) and runs that checkout's
own ``examples/run_grpo.py`` with the same arguments plus the overrides preflight chose.
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

    script = Path(nemo_rl.__file__).resolve().parents[1] / "examples" / "run_grpo.py"
    if not script.is_file():
        raise SystemExit(f"NeMo RL's examples/run_grpo.py not found next to {nemo_rl.__file__}; "
                         "run from a NeMo RL source checkout (the NVIDIA container has one)")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        extra = preflight(resolved_recipe(str(script), args))
    except ConfigError as err:
        raise SystemExit(f"GradAlign refuses this configuration (nothing was started):\n{err}") from None

    from nemo_gradalign.integrations.nemo_rl.entry import install_all

    install_all()
    sys.argv = [str(script), *args, *extra]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
