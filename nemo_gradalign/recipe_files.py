"""Recipe files as NeMo RL reads them: YAML with a ``defaults:`` chain, Hydra-style overrides,
interpolations resolved; every failure a ConfigError naming the file or the override."""

from __future__ import annotations

from pathlib import Path

from nemo_gradalign.config import ConfigError


def read_yaml_mapping(path: str | Path, what: str = "recipe") -> dict:
    """A YAML file that must hold a mapping; anything else is a ConfigError naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys, got a {type(data).__name__}: {data!r:.80}")
    return data


def load_yaml_with_defaults(path: str | Path, _chain: tuple[Path, ...] = ()):
    """NeMo RL's ``load_config_with_inheritance``: a ``defaults:`` key (a path or a list of paths,
    relative to the file) names parents that are loaded first and merged under this file."""
    from omegaconf import OmegaConf

    path = Path(path)
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in [*_chain, path.resolve()])
        raise ConfigError(f"defaults: cycle in recipe inheritance: {cycle}")
    cfg = OmegaConf.create(read_yaml_mapping(path))
    parents = cfg.pop("defaults", None) if "defaults" in cfg else None
    if parents is None:
        return cfg
    parents = [parents] if isinstance(parents, str) else list(parents)
    merged = OmegaConf.create()
    for parent in parents:
        parent_path = Path(parent) if Path(parent).is_absolute() else path.parent / parent
        merged = OmegaConf.merge(merged, load_yaml_with_defaults(parent_path, (*_chain, path.resolve())))
    return OmegaConf.merge(merged, cfg)


def apply_overrides(cfg, overrides: list[str]):
    """Hydra-syntax command-line overrides, as NeMo RL's ``parse_hydra_overrides`` applies them:
    struct mode, so ``key=value`` must name an existing key and ``++key=value`` adds one."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, OverrideParseException
    from omegaconf import OmegaConf

    if not overrides:
        return cfg
    try:
        parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
        OmegaConf.set_struct(cfg, True)
        ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
    except (ConfigCompositionException, OverrideParseException) as err:
        raise ConfigError(f"bad override {' '.join(overrides)!r}: {err}") from None
    finally:
        OmegaConf.set_struct(cfg, False)
    return cfg


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> dict:
    """A recipe as a plain dict: inheritance, then overrides, then interpolations resolved."""
    from omegaconf import OmegaConf

    from omegaconf.errors import OmegaConfBaseException

    cfg = apply_overrides(load_yaml_with_defaults(path), overrides or [])
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:  # ${...} naming a missing key, or a bad resolver
        raise ConfigError(f"recipe {path}: {' '.join(str(err).split())}") from None
