"""The steered flag in NeMo RL's data-plane trainer (``data_plane.enabled``: ``grpo_train_sync``).

There the batch lives in the data plane (TransferQueue) and the driver holds only its keys
(``KVBatchMeta``), so the feedback cannot ride ``dynamic_sampling`` (grpo_train_sync never calls
it) nor read ``message_log``. The memory sampler still serves the loader grpo_train_sync draws
from (the one setup() returns), and two extension points carry the rest:

- the policy: run_grpo.py builds the data-plane ``TQPolicy`` through setup()'s ``policy_factory``;
  ours is its subclass (workers with the GradAlign extension, as the plain policy's), whose
  ``train_from_meta`` first reads the step's rows back from the data plane (token ids, lengths,
  loss mask, the sample mask the driver wrote for training), names each row's problem by the
  dataset ``idx`` the loader served in its place (the data plane carries tensors only; every row
  is checked to start with that problem's prompt), hands them to the memory feedback (scored
  with a separate pass at the weights the step trains from, G from the batch's trusted groups)
  and then trains as upstream's; the feedback's ``gradalign/*`` metrics join the step's;
- the rewards: they never enter the data plane, so the advantage estimator grpo_train_sync
  creates (``grpo_sync._create_advantage_estimator``, looked up at call time) is wrapped to keep
  the rewards it is given, unchanged, for the train call that follows.

The single controller (``async_rl``: examples/run_grpo_single_controller.py) builds its loader,
policy and estimator inside its own actor and trains through a split API: refused.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from nemo_gradalign.integrations.nemo_rl.config_access import lookup, memory_only, section

FLAT_KEYS = ("input_ids", "input_lengths", "token_mask", "total_reward")


def refusals(master_config: Any, cfg) -> list[str]:
    """Why the flag cannot run this data-plane recipe ([] when it can or the plane is off)."""
    found = []
    if section(master_config, "async_rl", None) is not None:
        found.append("async_rl=<set>: the single controller (examples/run_grpo_single_controller.py) builds its loader, "
                     "policy and advantage estimator inside its own actor, which GradAlign cannot reach; GradAlign "
                     "starts upstream's run_grpo.py")
    if not cfg.steer or not lookup(master_config, "data_plane.enabled", False):
        return found
    return found + memory_only("data_plane.enabled", cfg, "the data-plane trainer (grpo_train_sync)",
                               "the data-plane rollout actor does not generate")


class RewardStash:
    """The rewards of the step being trained, from the estimator to the train call."""

    def __init__(self):
        self.rewards: torch.Tensor | None = None

    def take(self, rows: int) -> torch.Tensor:
        rewards, self.rewards = self.rewards, None
        if rewards is None or len(rewards) != rows:
            raise RuntimeError(f"gradalign (data plane): the advantage estimator saw "
                               f"{'no' if rewards is None else len(rewards)} rewards for the {rows} rows trained")
        return rewards


class RewardKeepingEstimator:
    """Upstream's estimator, whose ``compute_advantage`` also keeps the rewards it is given."""

    def __init__(self, estimator, stash: RewardStash):
        self._estimator, self._stash = estimator, stash

    def compute_advantage(self, *args, **kwargs):
        self._stash.rewards = torch.as_tensor(kwargs["rewards"]).detach().cpu().clone()
        return self._estimator.compute_advantage(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._estimator, name)


def install_reward_stash(grpo_sync_module, stash: RewardStash) -> Callable[[], None]:
    """Wrap ``grpo_sync_module._create_advantage_estimator``; returns the function that puts
    upstream's back."""
    current = grpo_sync_module._create_advantage_estimator
    original = getattr(current, "__gradalign_original__", current)

    @functools.wraps(original)
    def create(master_config):
        return RewardKeepingEstimator(original(master_config), stash)

    create.__gradalign_original__ = original
    grpo_sync_module._create_advantage_estimator = create

    def uninstall() -> None:
        grpo_sync_module._create_advantage_estimator = original

    return uninstall


def flat_rows(batch, pad_token_id: int) -> dict[str, torch.Tensor]:
    """GroupScorer's ``to_flat`` for rows read back from the data plane (already flat)."""
    return {key: batch[key] for key in FLAT_KEYS}


class LastBatch:
    """The memory loader's collate, keeping the step's problems (dataset ``idx`` and prompt
    tokens, in batch order): the data plane holds tensors only, so the rows' identities stay on
    the driver. The loader has no worker processes, so the last batch collated is the step's."""

    def __init__(self, collate: Callable):
        self.collate, self.idx, self.prompts = collate, [], []

    def __call__(self, data_batch):
        batch = self.collate(data_batch)
        self.idx = [int(i) for i in batch["idx"]]
        self.prompts = [torch.cat([m["token_ids"].reshape(-1) for m in log]) for log in batch["message_log"]]
        return batch


class DataPlaneFeedback:
    """``policy.gradalign_feedback``: the step's rows read back from the data plane (in the order
    the rollout actor wrote them: the batch's, group by group), checked against the prompts the
    loader served, with the kept rewards and the served ``idx``, handed to the memory feedback."""

    def __init__(self, feedback: Callable, stash: RewardStash, served: LastBatch, master_config: Any,
                 pad_token_id: int):
        self.feedback, self.stash, self.served, self.master_config = feedback, stash, served, master_config
        self.pad_token_id = pad_token_id

    def __call__(self, policy, meta) -> dict[str, float]:
        from nemo_rl.distributed.batched_data_dict import BatchedDataDict

        group = int(lookup(self.master_config, "grpo.num_generations_per_prompt"))
        rows = policy.read_from_dataplane(meta, select_fields=["input_ids", "input_lengths", "token_mask", "sample_mask"],
                                          pad_value_dict={"input_ids": self.pad_token_id})
        ids, lengths = rows["input_ids"], rows["input_lengths"]
        if len(lengths) != group * len(self.served.idx):
            raise RuntimeError(f"gradalign (data plane): {len(lengths)} rows trained, the loader served "
                               f"{len(self.served.idx)} prompts of {group} rollouts")
        for row in range(len(lengths)):
            prompt = self.served.prompts[row // group].to(ids.device)
            if int(lengths[row]) < len(prompt) or not torch.equal(ids[row, :len(prompt)], prompt.to(ids.dtype)):
                raise RuntimeError(f"gradalign (data plane): trained row {row} does not start with the prompt of "
                                   f"dataset idx {self.served.idx[row // group]} the loader served in that place")
        batch = BatchedDataDict({"input_ids": ids, "input_lengths": lengths, "token_mask": rows["token_mask"],
                                 "loss_multiplier": rows["sample_mask"],  # as the driver wrote it for train()
                                 "idx": [i for i in self.served.idx for _ in range(group)],
                                 "total_reward": self.stash.take(len(lengths))})
        return self.feedback(batch, self.master_config)


@functools.lru_cache(maxsize=None)
def policy_class():
    """``GradAlignTQPolicy``: upstream's TQPolicy whose ``train_from_meta`` runs the feedback first."""
    from nemo_rl.models.policy.tq_policy import TQPolicy

    class GradAlignTQPolicy(TQPolicy):
        gradalign_feedback: Callable | None = None  # set by the entry once setup() has built the scorer

        def train_from_meta(self, meta, loss_fn, *args, **kwargs):
            metrics = self.gradalign_feedback(self, meta) if self.gradalign_feedback is not None else {}
            result = super().train_from_meta(meta, loss_fn, *args, **kwargs)
            if metrics:  # grpo_train_sync merges all_mb_metrics into the step's metrics
                result["all_mb_metrics"] = {**result.get("all_mb_metrics", {}), **metrics}
            return result

    return GradAlignTQPolicy


def policy_factory(master_config: Any, worker_fqn: str) -> Callable:
    """What run_grpo.py's ``_make_policy`` builds (TQPolicy over ``data_plane``), ours instead."""
    dp_cfg = section(master_config, "data_plane", None)
    return functools.partial(policy_class(), dp_cfg=dp_cfg, worker_extension_cls_fqn=worker_fqn)
