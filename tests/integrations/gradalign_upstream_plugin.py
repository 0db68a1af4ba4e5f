"""pytest plugin for running NeMo RL's OWN unit tests with GradAlign's hook installed.

  PYTHONPATH=<nemo-rl checkout>:<this folder> pytest -p gradalign_upstream_plugin \\
      tests/unit/algorithms/test_grpo.py -k dynamic_sampling

Installs what the entry point installs (load_config's default block, the setup wrapper) and the
dynamic_sampling hook on the real ``nemo_rl.algorithms.grpo`` before collection (the upstream
tests bind the names at import). Upstream's configs carry no ``gradalign:`` block, so the
flag is off: every call must reach upstream's function unchanged, and the scorer must never run.
"""

from __future__ import annotations

CALLS = {"hook": 0}


def _never_score(batch, master_config, validation=None):
    raise AssertionError("GradAlign scored a batch although gradalign.enabled is off")


def pytest_configure(config):
    import nemo_rl.algorithms.grpo as grpo

    from nemo_gradalign.integrations.nemo_rl.entry import install_all
    from nemo_gradalign.integrations.nemo_rl.selection import install

    install_all()  # load_config default block + setup wrapper, as the entry point does
    install(grpo, _never_score)
    hooked = grpo.dynamic_sampling

    def counting(*args, **kwargs):
        CALLS["hook"] += 1
        return hooked(*args, **kwargs)

    grpo.dynamic_sampling = counting


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"gradalign hook: dynamic_sampling went through the hook {CALLS['hook']} times")
