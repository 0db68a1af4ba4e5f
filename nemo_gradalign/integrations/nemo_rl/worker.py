"""NeMo RL's Megatron policy worker with GradAlign's methods (imported only inside NeMo RL's Ray
workers, by the FQN below; never at package import).

The class is registered in ``ACTOR_ENVIRONMENT_REGISTRY`` with the executable of upstream's own
Megatron worker and passed to ``Policy(worker_extension_cls_fqn=...)`` (v0.7+/main) or through a
``Policy`` partial (v0.6); see entry.py.
"""

from __future__ import annotations

import ray
from nemo_rl.models.policy.utils import get_runtime_env_for_policy_worker
from nemo_rl.models.policy.workers.megatron_policy_worker import MegatronPolicyWorkerImpl

from nemo_gradalign.integrations.nemo_rl.worker_mixin import GradAlignWorkerMixin

FQN = "nemo_gradalign.integrations.nemo_rl.worker.GradAlignMegatronPolicyWorker"
UPSTREAM_FQN = "nemo_rl.models.policy.workers.megatron_policy_worker.MegatronPolicyWorker"


class GradAlignMegatronPolicyWorkerImpl(GradAlignWorkerMixin, MegatronPolicyWorkerImpl):
    pass


@ray.remote(runtime_env=get_runtime_env_for_policy_worker("megatron_policy_worker"))
class GradAlignMegatronPolicyWorker(GradAlignMegatronPolicyWorkerImpl):
    pass
