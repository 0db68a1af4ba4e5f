"""Test-wide settings."""

from nemo_gradalign.megatron import parallel

# Ranks of in-process tests are forked from pytest (0.3 s each) rather than spawned (about 5 s of
# imports each, some sixty times a suite); the CLI's own ranks, run as subprocesses, still spawn.
parallel.START_METHOD = "fork"
