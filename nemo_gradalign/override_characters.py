"""Launch overrides reach the job byte-identical, or are refused naming the character.

A control character or line break survives a bash array (written as ``$'\\xNN'``) but not NeMo RL's
path (YAML here, ray.sub's COMMAND, Hydra in the job), and Hydra takes one only inside a quoted value.
"""

from __future__ import annotations

import re
import shlex

from nemo_gradalign.config import ConfigError

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0, DEL, C1, line and paragraph separators


def _escaped(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def _character_refused(override: str, at: int, why: str) -> ConfigError:
    return ConfigError(f"override '{_escaped(override)}': character {at + 1} is {_escaped(override[at])} "
                       f"(U+{ord(override[at]):04X}), {why}")


def check_nemo_rl(overrides: list[str]) -> None:
    """A control character or line break cannot reach NeMo RL's job unchanged: the overrides are
    read here as YAML (which folds line breaks into spaces), travel in ray.sub's COMMAND through the
    job's environment and are read there by Hydra (which refuses them unquoted). Refused, named."""
    for override in overrides:
        if found := _CONTROL.search(override):
            raise _character_refused(override, found.start(), "which would not reach NeMo RL's job unchanged "
                                     "(its overrides are re-parsed on the way); remove it")


def check_embedded(overrides: list[str]) -> None:
    """The rank command's bash array carries every character but NUL (bash_word); train reads
    overrides with Hydra, whose syntax takes a control character only inside a quoted value. An
    override Hydra refuses because of one is refused here in one line naming it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()

    def parses(override: str) -> bool:
        try:
            parser.parse_overrides([override])
        except OverrideParseException:
            return False
        return True

    for override in overrides:
        found = _CONTROL.search(override)
        if found and "\0" in override:
            raise _character_refused(override, override.index("\0"), "which no process argument can hold; remove it")
        if found and not parses(override) and parses(_CONTROL.sub("x", override)):
            raise _character_refused(override, found.start(), "which Hydra's override syntax takes only inside "
                                     "a quoted value (key='...'); quote the value or remove it")


def bash_word(arg: str) -> str:
    """shlex.quote, with each control character written as $'\\xNN' (its UTF-8 bytes) outside the
    quotes: bash restores every byte, and the script holds none (sbatch refuses one with \\r\\n)."""
    return re.sub(f"{_CONTROL.pattern}+", lambda m: "'$'" + "".join(f"\\x{b:02x}" for b in m.group().encode())
                  + "''", shlex.quote(arg))
