"""The trusted validation prompts are generated in a rollout call of their own, so upstream's batch,
rollout metrics, baselines, dynamic sampling and loader position are exactly what they are without
GradAlign; and the loader's cadence survives a resume in upstream's own order (torchdata's real
StatefulDataLoader; NeMo RL's real rollout, baseline and dynamic_sampling where importable)."""

from __future__ import annotations

import inspect
import types

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

import upstream_standin
from nemo_gradalign.integrations.nemo_rl import validation_loader
from nemo_gradalign.integrations.nemo_rl.selection import install as install_hook
from nemo_gradalign.integrations.nemo_rl.validation_loader import REFRESH, WithValidationPrompts
from nemo_gradalign.integrations.nemo_rl.validation_rollouts import ValidationRollouts, install

G = 4
BDD = upstream_standin.BatchedDataDict


def standin_rollout(policy_generation, input_batch, tokenizer, task_to_env, max_seq_len,
                    max_rollout_turns=999999, greedy=False, deduplicate_multimodal_data=False):
    """run_multi_turn_rollout's signature and return shape; the 'generation' is a deterministic
    function of each row's prompt and its position in the call, the metrics are over all rows."""
    batch = input_batch.copy()
    batch["message_log"] = [log + [{"role": "assistant", "content": f"{log[0]['content']}#{i}"}]
                            for i, log in enumerate(batch["message_log"])]
    batch["total_reward"] = torch.tensor([float((hash(log[0]["content"]) + i) % 2)
                                          for i, log in enumerate(input_batch["message_log"])])
    return batch, {"mean_gen_tokens_per_sample": float(len(batch["message_log"])),
                   "rows": [log[0]["content"] for log in input_batch["message_log"]]}


def prompts(names):
    return BDD({"message_log": [[{"role": "user", "content": n}] for n in names],
                "idx": torch.arange(len(names)), "task_name": ["math"] * len(names)})


def marked(batch, due: bool):
    batch = batch.copy()
    batch[REFRESH] = torch.full((batch.size,), due, dtype=torch.bool)
    return batch


def step(grpo_module, batch, rollout_kwargs, baseline_and_std, ds_config, Timer):
    """grpo_train's order for one generation batch: repeat, rollout, baseline/std, dynamic_sampling."""
    repeated = batch.repeat_interleave(G)
    prompt_ids = repeated["idx"].unsqueeze(1)
    out, metrics = grpo_module.run_multi_turn_rollout(input_batch=repeated, **rollout_kwargs)
    baseline, std = baseline_and_std(prompt_ids, out["total_reward"], torch.ones(out.size),
                                     leave_one_out_baseline=True)
    kept = grpo_module.dynamic_sampling(out, std, baseline, 1, ds_config, Timer())
    return out, metrics, baseline, std, kept


def check_validation_apart(grpo_module, rollout, BatchedDataDict, baseline_and_std, Timer, rollout_kwargs):
    from test_selection_hook import AttrDict

    train = BatchedDataDict(prompts(["a", "b", "c"]).data)
    val = BatchedDataDict(prompts(["v0", "v1"]).data)
    cfg = AttrDict({"grpo": dict(num_prompts_per_step=1, num_generations_per_prompt=G, use_dynamic_sampling=True,
                                 dynamic_sampling_max_gen_batches=3, batch_multiplier=3,
                                 deduplicate_multimodal_data=False)})
    grpo_module.run_multi_turn_rollout = rollout
    plain = step(grpo_module, train, rollout_kwargs, baseline_and_std, cfg, Timer)

    store = ValidationRollouts(val, G)
    uninstall = install(grpo_module, store)
    try:
        assert grpo_module.run_multi_turn_rollout.__gradalign_original__ is rollout
        for due in (False, True):
            got = step(grpo_module, marked(train, due), rollout_kwargs, baseline_and_std, cfg, Timer)
            out, metrics, baseline, std, (kept, complete, _, ds_metrics) = got
            assert REFRESH not in out and out.size == plain[0].size
            for key in plain[0]:
                assert _same(out[key], plain[0][key]), key
            assert metrics == plain[1]  # what grpo_train logs as train/* rollout metrics
            assert torch.equal(baseline, plain[2]) and torch.equal(std, plain[3])
            assert complete == plain[4][1] and ds_metrics == plain[4][3]
            assert all(_same(kept[k], plain[4][0][k]) for k in plain[4][0])
            pending = store.take()
            if not due:
                assert pending is None
                continue
            assert pending["idx"].tolist() == [0] * G + [1] * G  # the validation prompts, G each
            assert [log[0]["content"] for log in pending["message_log"]] == ["v0"] * G + ["v1"] * G
            assert pending["total_reward"].shape == (2 * G,) and store.take() is None
    finally:
        uninstall()
    assert grpo_module.run_multi_turn_rollout is rollout


def _same(a, b) -> bool:
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def test_validation_generated_apart_on_stand_ins():
    from test_selection_hook import loo_baseline_and_std

    module = types.SimpleNamespace(dynamic_sampling=upstream_standin.dynamic_sampling)
    check_validation_apart(module, standin_rollout, BDD, loo_baseline_and_std, upstream_standin.Timer,
                           dict(policy_generation=None, tokenizer=None, task_to_env={}, max_seq_len=64))


def test_validation_generated_apart_with_the_real_baseline_and_dynamic_sampling():
    grpo = pytest.importorskip("nemo_rl.algorithms.grpo", reason="NeMo RL source not on PYTHONPATH")
    from nemo_rl.distributed.batched_data_dict import BatchedDataDict
    from nemo_rl.utils.timer import Timer

    module = types.SimpleNamespace(dynamic_sampling=grpo.dynamic_sampling)
    check_validation_apart(module, standin_rollout, BatchedDataDict, grpo.calculate_baseline_and_std_per_prompt,
                           Timer, dict(policy_generation=None, tokenizer=None, task_to_env={}, max_seq_len=64))


def test_wrapper_binds_the_real_rollout_signatures():
    grpo = pytest.importorskip("nemo_rl.algorithms.grpo", reason="NeMo RL source not on PYTHONPATH")
    for name in ("run_multi_turn_rollout", "run_async_multi_turn_rollout"):
        params = inspect.signature(getattr(grpo, name)).parameters
        assert list(params)[:2] == ["policy_generation", "input_batch"], name
    ours, theirs = (inspect.signature(f).parameters for f in (standin_rollout, grpo.run_multi_turn_rollout))
    assert list(ours)[:len(theirs)] == list(theirs)[:len(ours)]  # main added deduplicate_multimodal_data
    assert all(name in ours for name, p in theirs.items() if p.default is inspect.Parameter.empty)


# -- resume: upstream's order with torchdata's real StatefulDataLoader ----------------------------

def make_loader(seed: int):
    torch.manual_seed(seed)  # a fresh process: the shuffle order must come from the saved state
    items = [{"idx": i} for i in range(10)]
    return StatefulDataLoader(items, batch_size=2, shuffle=True, drop_last=True,
                              collate_fn=lambda rows: BDD({"idx": torch.tensor([r["idx"] for r in rows])}))


def run_epochs(loader, epochs: int, stop_after: int | None = None):
    seen = []
    for _ in range(epochs):
        for batch in loader:  # grpo_train: for each epoch, for batch in wrapped_dataloader
            seen.append((batch["idx"].tolist(), bool(batch[REFRESH][0])))
            if stop_after is not None and len(seen) == stop_after:
                return seen
    return seen


def restore_raw(raw, checkpoint):
    """What upstream's setup() does on resume, before GradAlign's wrapper exists."""
    try:
        from nemo_rl.data.utils import load_dataloader_state  # main / v0.7
    except ImportError:  # v0.6 (inline torch.load) or no NeMo RL
        raw.load_state_dict(torch.load(checkpoint / "train_dataloader.pt"))
    else:
        load_dataloader_state(raw, str(checkpoint), {}, "")


@pytest.mark.parametrize("stop", [3, 5, 7])
def test_resume_continues_positions_and_cadence(tmp_path, stop):
    full = run_epochs(WithValidationPrompts(make_loader(0), refresh_every=3), epochs=2)
    assert [due for _, due in full] == [i % 3 == 0 for i in range(10)]

    first = WithValidationPrompts(make_loader(0), refresh_every=3)
    head = run_epochs(first, epochs=2, stop_after=stop)
    checkpoint = tmp_path / f"step_{stop}"
    checkpoint.mkdir()
    torch.save(first.state_dict(), checkpoint / "train_dataloader.pt")  # grpo_train's own save
    validation_loader.save_counter(first, checkpoint)  # the entry's init_tmp_checkpoint hook
    assert set(torch.load(checkpoint / "train_dataloader.pt")) == set(first.loader.state_dict())

    raw = make_loader(seed=1234)
    restore_raw(raw, checkpoint)
    resumed = WithValidationPrompts(raw, refresh_every=3)
    assert validation_loader.load_counter(resumed, checkpoint)
    epochs_left = 2 - (stop - 1) // 5  # grpo_train re-enters the epoch it saved in (maybe at its end)
    tail = run_epochs(resumed, epochs=epochs_left)
    assert head + tail == full


# -- upstream's real run_multi_turn_rollout: stand-in generation and tokenizer, a Ray environment --

class StandinGeneration:
    """GenerationInterface.generate's contract: each row gets two tokens, the first of its prompt
    and one that alternates with the row's position in the call (so rewards vary in a group), and
    their log-probs (right padded with zeros), which the rollout keeps on the assistant message."""

    def generate(self, data, greedy=False):
        ids, lengths = data["input_ids"], data["input_lengths"]
        out = torch.zeros(ids.shape[0], ids.shape[1] + 2, dtype=ids.dtype)
        logprobs = torch.zeros(out.shape, dtype=torch.float32)
        for i, n in enumerate(lengths.tolist()):
            out[i, :n] = ids[i, :n]
            out[i, n:n + 2] = torch.tensor([int(ids[i, 0]), 1 + i % 2])
            logprobs[i, n:n + 2] = -0.5
        return {"output_ids": out, "logprobs": logprobs, "generation_lengths": torch.full_like(lengths, 2),
                "unpadded_sequence_lengths": lengths + 2}


class StandinTokenizer:
    pad_token_id = 0

    def batch_decode(self, sequences, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in seq) for seq in sequences]

    def __call__(self, text, return_tensors="pt", add_special_tokens=False):
        return types.SimpleNamespace(input_ids=torch.zeros(1, 0, dtype=torch.long))


def _ray_env():
    import ray
    from nemo_rl.environments.interfaces import EnvironmentReturn

    @ray.remote(num_cpus=0)
    class LastTokenEnv:  # reward 1 when the response's last token is odd; one turn
        def step(self, message_logs, metadata):
            rewards = [float(int(log[-1]["content"].split()[-1]) % 2) for log in message_logs]
            n = len(message_logs)
            return EnvironmentReturn(observations=[{"role": "environment", "content": ""}] * n,
                                     metadata=[None] * n, next_stop_strings=[None] * n,
                                     rewards=torch.tensor(rewards), terminateds=torch.ones(n, dtype=torch.bool),
                                     answers=None)

    return LastTokenEnv.remote()


def test_real_rollout_generates_validation_apart():
    grpo = pytest.importorskip("nemo_rl.algorithms.grpo", reason="NeMo RL source not on PYTHONPATH")
    import ray
    from nemo_rl.distributed.batched_data_dict import BatchedDataDict
    from nemo_rl.utils.timer import Timer

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        def tokenized(names, first):
            return BatchedDataDict({
                "message_log": [[{"role": "user", "content": n, "token_ids": torch.tensor([first + i, 7])}]
                                for i, n in enumerate(names)],
                "idx": torch.arange(len(names)), "task_name": ["t"] * len(names),
                "extra_env_info": [None] * len(names), "loss_multiplier": torch.ones(len(names))})

        module = types.SimpleNamespace(dynamic_sampling=grpo.dynamic_sampling)
        train, val = tokenized(["a", "b", "c"], 10), tokenized(["v0", "v1"], 20)
        kwargs = dict(policy_generation=StandinGeneration(), tokenizer=StandinTokenizer(),
                      task_to_env={"t": _ray_env()}, max_seq_len=64, max_rollout_turns=1, greedy=False)
        original = grpo.run_multi_turn_rollout
        check_validation_apart_real(module, original, train, val, grpo, kwargs, BatchedDataDict, Timer)
    finally:
        if started:
            ray.shutdown()


def check_validation_apart_real(module, original, train, val, grpo, kwargs, BatchedDataDict, Timer):
    from test_selection_hook import AttrDict

    cfg = AttrDict({"grpo": dict(num_prompts_per_step=1, num_generations_per_prompt=G, use_dynamic_sampling=True,
                                 dynamic_sampling_max_gen_batches=3, batch_multiplier=3,
                                 deduplicate_multimodal_data=False)})
    module.run_multi_turn_rollout = original
    baseline_and_std = grpo.calculate_baseline_and_std_per_prompt
    plain = step(module, train, kwargs, baseline_and_std, cfg, Timer)
    assert plain[0]["total_reward"].tolist() == [1.0, 0.0] * 6  # the stand-in generation alternates
    store = ValidationRollouts(val, G)
    uninstall = install(module, store)
    try:
        out, metrics, baseline, std, (kept, complete, _, ds_metrics) = step(
            module, marked(train, True), kwargs, baseline_and_std, cfg, Timer)
    finally:
        uninstall()
    assert REFRESH not in out and set(out) == set(plain[0])
    assert all(_same(out[k], plain[0][k]) for k in out if k != "message_log")
    tensors = ("token_ids", "generation_logprobs")
    assert [[{k: v for k, v in m.items() if k not in tensors} for m in log] for log in out["message_log"]] == \
        [[{k: v for k, v in m.items() if k not in tensors} for m in log] for log in plain[0]["message_log"]]
    assert all(torch.equal(a["generation_logprobs"], b["generation_logprobs"]) for x, y in
               zip(out["message_log"], plain[0]["message_log"]) for a, b in zip(x, y) if "generation_logprobs" in a)
    assert metrics == plain[1]  # upstream's rollout metrics: training rows only
    assert torch.equal(baseline, plain[2]) and torch.equal(std, plain[3])
    assert complete == plain[4][1] and ds_metrics == plain[4][3]
    assert torch.equal(kept["idx"], plain[4][0]["idx"])
    pending = store.take()
    assert pending["idx"].tolist() == [0] * G + [1] * G and pending["total_reward"].tolist() == [1.0, 0.0] * G
    check_flat_rows_as_trained(out, grpo)
    check_flat_rows_as_trained(pending, grpo)
    assert [log[0]["content"] for log in pending["message_log"]] == ["v0"] * G + ["v1"] * G


def check_flat_rows_as_trained(batch, grpo):
    """The driver's flat rows of a real rollout's batch, as dynamic_sampling sees it (no loss mask
    yet), equal what grpo_train trains on: upstream's own add_grpo_token_loss_masks_and_generation_logprobs
    and flattening, on a copy; the batch's messages are not changed."""
    import copy

    from nemo_rl.data.llm_message_utils import batched_message_log_to_flat_message

    from nemo_gradalign.integrations.nemo_rl.driver import flat_group_data

    assert not any("token_loss_mask" in m for log in batch["message_log"] for m in log)
    before = copy.deepcopy(batch["message_log"])
    ours = flat_group_data(batch, 0)
    logs = copy.deepcopy(batch["message_log"])
    grpo.add_grpo_token_loss_masks_and_generation_logprobs(logs)
    flat, lengths = batched_message_log_to_flat_message(logs, pad_value_dict={"token_ids": 0})
    assert torch.equal(ours["input_ids"], flat["token_ids"]) and torch.equal(ours["input_lengths"], lengths)
    assert torch.equal(ours["token_mask"], flat["token_loss_mask"]) and ours["token_mask"].sum() > 0
    assert [[set(m) for m in log] for log in batch["message_log"]] == [[set(m) for m in log] for log in before]
