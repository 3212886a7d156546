"""granite rl: on-policy GRPO with the DAPO loss over verifier and reward-model rewards, one recipe stage at a time.

    granite rl --stage N [PROMPTS ...] [--init-from CKPT] [-o CKPT] [--reward-model RM]
    granite rl reward-model [PAIRS ...]        (reward_model.py: the reward model stage 2 is scored by)

1. settings: the recipe's [rl] table (IBM: G=16, 64 prompts a step, 8K context, DAPO's token-level loss and
   0.2/0.28 clip) and its [[rl.stages]] entry (data, LR, KL beta, steps); flags win.
2. prompts (prompts.py): RL prompts checked before training (an unknown verifier is FILE:LINE, exit 2); a fixed
   share held out; chat prompts (verifier `reward_model`) scored by the reward model (rewards.py) when there is
   one, else left out, counted; stage 2 (rlhf) needs one.
3. model: the starting checkpoint (stage 1: sft; stage N: rl-stage-(N-1)) is the policy, and a frozen copy is
   the KL reference (none with --beta 0). Both are scored at the rollouts' temperature (log-probabilities of
   softmax(logits / T), the distribution the samples came from, as TRL and verl do; top-p is not undone).
4. train: the shared loop (granite_cli/training/) with rollouts (rollouts.py) as its batch source and the
   policy loss (objective.py); `--updates-per-batch` optimizer steps per rollout batch; exact resume.
5. evaluate (heldout.py, regression.py): the held-out prompts of every stage's data answered before and after
   (K samples a prompt at the rollouts' temperature), per domain, with a paired bootstrap interval; the regression
   table (domains x the starting model and each stage) is printed and goes to the lineage, heldout.jsonl into the
   checkpoint and the per-domain rewards to <run-dir>/eval/ for `granite eval table`. A domain that fell more than
   --regression-tolerance below its best earlier stage, by more than noise (its paired interval below zero), is a
   warning, or exit 1 with --fail-on-regression.

Where this departs from the papers:
- The group std is the unbiased one plus 1e-6 (TRL and verl do the same; the GRPO paper does not say).
- The old policy's log-probabilities are recomputed by the trainer's forward after generation, not taken from
  the sampler, so the first update's ratio is exactly 1 (the sampler's numbers can differ slightly).
- A prompt is prefilled once for its G samples (model/generation.py copies its KV cache to their rows); the
  samples then decode as separate rows, without vLLM's paged sharing of the prompt's cache blocks.
- Rollouts sample in-process by default, and under torchrun every rank generates the whole step's rollouts.
  With --rollout-server an external vLLM server samples (server.py: weights pushed through vLLM's shared-disk
  weight-transfer routes before each rollout step, truncated importance sampling for the sampler's drift); the
  trainer is then one process, and vLLM's NCCL / CUDA-IPC weight transfer is not built.
- The RLHF reward is sigmoid(score - offset) of a Bradley-Terry reward model trained here (IBM does not publish
  its reward model), in [0, 1] like the verifiers' rewards, so chat and verified domains mix in one batch.
- The zero-variance and truncated masks, the entropy bonus and the top-entropy mask are off by default, as in
  the recipe; the overlong penalty is DAPO's linear one.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer

from granite_cli import options
from granite_cli.console import console
from granite_cli.errors import BadInput, GraniteError
from granite_cli.training.stage import TrainingFlags, TrainingRun, input_record, training_command
from stages.rl import reward_model

SCALE_REWARDS = ("group", "none")

app = typer.Typer(cls=options.DefaultCommandGroup, help="Reinforcement learning: one of the recipe's four GRPO stages "
                  "(default: `granite rl --stage N` is `granite rl run --stage N`) or the reward model of the RLHF stage "
                  "(`reward-model`).")


@app.command("run")
@training_command(log_every=1)
def rl_command(
    data: Optional[list[str]] = typer.Argument(None, help="RL prompt files (docs/design.md, contract 3). Default: the "
                                                          "stage's `data` in the recipe."),
    stage: int = typer.Option(1, "--stage", help="Which of the recipe's rl stages to run (its number, 1-4)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Checkpoint directory. Default: "
                                                                      "<run-dir>/checkpoints/rl-stage-N."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="The starting checkpoint (and KL reference). Default: "
                                                                      "<run-dir>/checkpoints/sft for stage 1, rl-stage-(N-1) after."),
    reward_model: Optional[str] = typer.Option(None, "--reward-model", help="Reward model (`granite rl reward-model`) that "
                                               "scores chat prompts. Default: <run-dir>/checkpoints/reward-model where it "
                                               "exists (stage 2, rlhf, needs one; the other stages then score chat with it too)."),
    recipe: Optional[str] = options.RecipeOption,
    run_dir: Optional[str] = options.RunDirOption,
    steps: Optional[int] = typer.Option(None, "--steps", help="Rollout steps. Recipe default (the stage's `steps`; 0 there: "
                                                              "one pass over the training prompts)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate, constant. Recipe default (IBM: 5e-7 or 3e-7)."),
    warmup: int = typer.Option(0, "--warmup", help="Rollout steps of linear LR warmup before the constant LR (IBM: unpublished)."),
    beta: Optional[float] = typer.Option(None, "--beta", help="KL coefficient to the starting model, k3 estimator; 0 keeps no "
                                                              "reference model in memory. Recipe default (IBM: 0.05 or 0.09)."),
    samples_per_prompt: Optional[int] = typer.Option(None, "--samples-per-prompt", "-G", help="Completions per prompt, the "
                                                     "GRPO group. Recipe default (IBM: 16)."),
    prompts_per_step: Optional[int] = typer.Option(None, "--prompts-per-step", help="Prompts per rollout batch. Recipe "
                                                   "default (IBM: 64)."),
    max_context: Optional[int] = typer.Option(None, "--max-context", help="Prompt plus completion, in tokens; longer prompts "
                                              "are left out, counted. Recipe default (IBM: 8192)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Completion length cap. Recipe default "
                                                 "(0: max context minus the longest prompt)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Rollout sampling temperature (above 0); the "
                                                "loss scores the samples at it too. Default: the recipe's [rl] temperature "
                                                "(granite-4.1 1.0, tiny 0.8)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Rollout nucleus sampling. Recipe default (1.0)."),
    epsilon_low: Optional[float] = typer.Option(None, "--epsilon-low", help="Lower clip of the ratio. Recipe default (DAPO: 0.2)."),
    epsilon_high: Optional[float] = typer.Option(None, "--epsilon-high", help="Upper clip of the ratio, decoupled. Recipe "
                                                 "default (DAPO: 0.28)."),
    loss: Optional[str] = typer.Option(None, "--loss", help="Normalisation: dapo (over the batch's tokens), grpo (per "
                                       "sequence, then over sequences) or dr_grpo (a constant). Recipe default (dapo)."),
    scale_rewards: str = typer.Option("group", "--scale-rewards", help="group: advantages divided by the group's std "
                                      "(GRPO); none: only centred (Dr. GRPO)."),
    updates_per_batch: int = typer.Option(1, "--updates-per-batch", help="Optimizer steps (mini-batches) per rollout "
                                          "batch; above 1 the ratio moves off 1 and the clip acts (IBM: unpublished)."),
    overlong_buffer: int = typer.Option(0, "--overlong-buffer", help="DAPO's soft overlong penalty over the last N tokens "
                                        "of the completion budget (0: off, as in the recipe)."),
    overlong_penalty: float = typer.Option(1.0, "--overlong-penalty", help="The penalty at the budget's end (DAPO: 1)."),
    dynamic_sampling: Optional[bool] = typer.Option(None, "--dynamic-sampling/--no-dynamic-sampling", help="Drop groups whose "
                                                    "rewards are all equal and draw more prompts. Recipe default (off: costly)."),
    max_draws: int = typer.Option(3, "--max-draws", help="With dynamic sampling: rollout rounds per step at most."),
    mask_truncated: bool = typer.Option(False, "--mask-truncated", help="Leave completions cut at --max-new-tokens out of the loss."),
    skip_zero_variance: bool = typer.Option(False, "--skip-zero-variance", help="Leave groups whose rewards are all equal out "
                                            "of the loss and its denominator (their advantage is 0; only the KL term remains)."),
    entropy_coef: float = typer.Option(0.0, "--entropy-coef", help="Entropy bonus in the loss (0: off)."),
    top_entropy: float = typer.Option(1.0, "--top-entropy", help="Train only on this share of completion tokens, those where "
                                      "the policy's entropy is highest (1: all; 0.2 in 'Beyond the 80/20 rule')."),
    heldout_fraction: Optional[float] = typer.Option(None, "--heldout-fraction", help="Share of prompts held out to evaluate "
                                                     "the stage (0: no evaluation). Recipe default (0.1)."),
    heldout_per_domain: Optional[int] = typer.Option(None, "--heldout-per-domain", help="Held-out prompts per domain at most "
                                                     "in the evaluation (0: all). Recipe default."),
    regression_tolerance: Optional[float] = typer.Option(None, "--regression-tolerance", help="How far a domain's held-out "
                                                         "reward may fall below its best earlier stage before the stage "
                                                         "reports a regression (a fall past it whose 95% paired interval "
                                                         "reaches zero is reported as noise). Recipe default."),
    fail_on_regression: bool = typer.Option(False, "--fail-on-regression", help="Exit 1 (after writing the checkpoint) when "
                                            "a domain regressed, so a pipeline stops before the next stage builds on it; "
                                            "without it, a warning."),
    heldout_samples: int = typer.Option(4, "--heldout-samples", help="Answers per held-out prompt, at the rollouts' "
                                        "temperature; a prompt scores the mean of their rewards."),
    heldout_temperature: Optional[float] = typer.Option(None, "--heldout-temperature", help="Temperature of the held-out "
                                                        "answers (0: one greedy answer). Default: the rollouts' temperature."),
    verifier_workers: int = typer.Option(4, "--verifier-workers", help="Verifiers (code, SQL) running at once."),
    verifier_timeout: float = typer.Option(30.0, "--verifier-timeout", help="Seconds a verifier may take; past it the reward "
                                           "is 0, counted."),
    rollout_server: Optional[str] = typer.Option(None, "--rollout-server", help="Sample rollouts from this vLLM server "
                                                 "(its root URL, e.g. http://127.0.0.1:8000, started with VLLM_SERVER_DEV_MODE=1 "
                                                 "--weight-transfer-config '{\"backend\": \"disk\"}' and --logprobs-mode "
                                                 "processed_logprobs), pushing the policy's weights to it before each rollout "
                                                 "step. Default: sample in-process."),
    rollout_model: Optional[str] = typer.Option(None, "--rollout-model", help="The model name the rollout server serves. "
                                                "Default: the starting checkpoint's path (vLLM names a model by the path "
                                                "it was started with)."),
    weight_dir: Optional[str] = typer.Option(None, "--weight-dir", help="Where the policy's weights are written for the "
                                             "rollout server to load; it must see this path. Default: rollout-weights "
                                             "in the stage's work directory (.OUTPUT.partial/), removed when it ends."),
    tis_cap: float = typer.Option(2.0, "--tis-cap", help="With a rollout server: the cap C of truncated importance "
                                  "sampling, min(pi_trainer / pi_server, C) per token (Yao et al. 2025: 2)."),
    allow_unsafe_code: bool = typer.Option(False, "--allow-unsafe-code", help="Run code prompts' tests without a sandbox where "
                                           "none can be made (never on a shared machine)."),
    on_error: str = options.OnErrorOption,
    flags: TrainingFlags = None,
) -> None:
    """One RL stage of the recipe: GRPO with the DAPO loss, rewarded by verifiers and the reward model."""
    from granite_cli.data.records import ErrorPolicy
    from granite_cli.recipe import load_recipe
    from granite_cli.rundir import resolve_init
    from granite_cli.training.logprobs import TokenLogprobs
    from granite_cli.training.schedules import build_schedule
    from model.reward_model import RewardScorer
    from stages.rl import heldout, regression
    from stages.rl.rewards import Rewarder
    from stages.rl.objective import NORMALISATIONS, PolicyLoss
    from stages.rl.prompts import load_prompts
    from model.generation import Sampling
    from stages.rl.rollouts import RolloutSettings, Rollouts

    loaded = load_recipe(recipe, run_dir)
    table = loaded.rl
    entry = next((s for s in table.stages if s.number == stage), None)
    if entry is None:
        raise BadInput(f"the recipe has no [[rl.stages]] entry number {stage} (it has: "
                       f"{', '.join(str(s.number) for s in table.stages) or 'none'})")
    normalisation = loss or table.loss
    if normalisation not in NORMALISATIONS:
        raise BadInput(f"--loss must be one of {', '.join(NORMALISATIONS)}")
    if scale_rewards not in SCALE_REWARDS:
        raise BadInput(f"--scale-rewards must be one of {', '.join(SCALE_REWARDS)}")
    if updates_per_batch < 1 or not 0 < top_entropy <= 1:
        raise BadInput("--updates-per-batch must be at least 1 and --top-entropy in (0, 1]")
    if (regression_tolerance is not None and regression_tolerance < 0) or (heldout_per_domain or 0) < 0:
        raise BadInput("--regression-tolerance and --heldout-per-domain must not be negative")
    if flags.parallel == "fsdp":
        raise BadInput("rl samples with the unsharded policy: run it with --parallel ddp")
    if tis_cap < 1:
        raise BadInput("--tis-cap must be at least 1")
    sampled_at = temperature if temperature is not None else table.temperature
    if not sampled_at > 0:
        raise BadInput(f"--temperature must be positive (rollouts at 0 would be G copies of one greedy answer), not {sampled_at:g}")
    if rollout_server:
        from stages.rl.server import check_url

        check_url(rollout_server)  # before the run takes its work directory
    kl = beta if beta is not None else entry.beta
    group = samples_per_prompt or table.samples_per_prompt
    per_step = prompts_per_step or table.prompts_per_step
    context = max_context or table.max_context
    paths = list(data) if data else entry.data
    out = Path(output) if output else loaded.paths.checkpoint(f"rl-stage-{stage}")
    default_parent = loaded.paths.checkpoint("sft" if stage == table.stages[0].number else
                                             f"rl-stage-{max(s.number for s in table.stages if s.number < stage)}")
    parent = resolve_init(init_from, default_parent,
                          f"no finished checkpoint at {default_parent}: run the stage before, or pass --init-from CKPT")
    if parent is None:
        raise BadInput("rl starts from a trained chat model: --init-from none is not allowed")
    tokenizer = chat_tokenizer(parent)
    judge = reward_model_path(reward_model, loaded.paths.checkpoint("reward-model"), entry)
    policy = ErrorPolicy(on_error)
    fraction = heldout_fraction if heldout_fraction is not None else table.heldout_fraction
    train_prompts, own_heldout, counts = load_prompts(paths, policy, fraction, reward_model=judge is not None)
    # on the recipe's data the evaluation covers every stage's domains (the held-out prompts of the other stages'
    # files too), so each stage's table has the same rows; given PROMPTS, it covers what they hold
    others = [p for s in table.stages for p in s.data if p not in paths] if not data else []
    _, other_heldout, _ = load_prompts(others, policy, fraction, reward_model=judge is not None, need_train=False)
    per_domain = heldout_per_domain if heldout_per_domain is not None else table.heldout_per_domain
    heldout_prompts = regression.suite(own_heldout + other_heldout, per_domain) if fraction > 0 else []
    counts["heldout"] = len(heldout_prompts)
    policy.report()
    if any(p.verifier["type"] == "code" for p in train_prompts + heldout_prompts):
        from granite_cli.verify.sandbox import require_isolation

        require_isolation(allow_unsafe_code)
    with TrainingRun("rl", out, flags) as run:
        tokenizer_dir = run.workdir / "tokenizer"
        if run.dist.main:
            tokenizer.save_pretrained(str(tokenizer_dir))
        model, reference, lineage = policy_and_reference(parent, kl, flags.seed)
        engine = policy_engine(model, tokenizer, run.dist.device, group * per_step)
        rewarder = Rewarder(verifier_workers, verifier_timeout, RewardScorer(judge, run.dist.device) if judge else None)
        server = rollout_server_of(rollout_server, rollout_model or str(parent), weight_dir, run, tokenizer)
        new_tokens = fit_prompts(train_prompts, heldout_prompts, engine, tokenizer, context,
                                 max_new_tokens if max_new_tokens is not None else table.max_new_tokens, counts)
        n_steps = steps if steps is not None else (entry.steps or math.ceil(len(train_prompts) / per_step))
        rows_multiple = run.dist.world  # each process takes the same number of packed rows
        peak_lr = lr if lr is not None else entry.lr
        schedule = build_schedule({"name": "constant", "warmup": warmup * updates_per_batch}, peak_lr, n_steps * updates_per_batch)
        settings = run.settings(schedule, table, offset=0, n_steps=n_steps * updates_per_batch,
                                global_batch=flags.micro_batch * run.dist.world,
                                seq=context, model=model)
        settings.schedule_unit = "steps"
        settings.log_every = flags.log_every * updates_per_batch  # in rollout steps, like every rl flag
        settings.checkpoint_every = flags.checkpoint_every * updates_per_batch  # a checkpoint never splits a rollout batch
        eval_temperature = heldout_temperature if heldout_temperature is not None else sampled_at
        evaluation = Sampling(max_new_tokens=new_tokens, temperature=eval_temperature, top_p=1.0, seed=flags.seed,
                              n=heldout_samples if eval_temperature > 0 else 1)
        rollouts = Rollouts(train_prompts, RolloutSettings(
            samples_per_prompt=group, prompts_per_step=per_step, max_new_tokens=new_tokens,
            temperature=sampled_at,
            top_p=top_p if top_p is not None else table.top_p, updates_per_batch=updates_per_batch, pack_len=context,
            rows_multiple=rows_multiple, seed=flags.seed, normalisation=normalisation, scale_rewards=scale_rewards == "group",
            overlong_buffer=overlong_buffer, overlong_penalty=overlong_penalty,
            dynamic_sampling=dynamic_sampling if dynamic_sampling is not None else table.dynamic_sampling,
            max_draws=max_draws, mask_truncated=mask_truncated, skip_zero_variance=skip_zero_variance,
            top_entropy=top_entropy, reference=kl > 0), rewarder, tokenizer.eos_token_id, tokenizer.pad_token_id)
        objective = PolicyLoss(normalisation, epsilon_low if epsilon_low is not None else table.epsilon_low,
                               epsilon_high if epsilon_high is not None else table.epsilon_high, kl, entropy_coef, new_tokens,
                               tis_cap)
        trainer = run.trainer(model, settings, rollouts, tokenizer_dir, lineage, loss=objective, reference=reference,
                              scorer=functools.partial(TokenLogprobs, temperature=sampled_at))
        rollouts.attach(trainer, engine, server, tokenizer_dir)
        console.print(f"rl stage {stage} ({entry.name}) from {parent}: {n_steps} steps x {per_step} prompts x {group} samples, "
                      f"up to {new_tokens} new tokens, loss {normalisation}, lr {peak_lr:g}, beta {kl:g}; prompts: "
                      f"{dict(counts)}; {settings.precision}, {run.dist.world} process(es) on {run.dist.device}"
                      + (f"; chat scored by the reward model {judge}" if judge else "")
                      + (f"; rollouts from {server.url}, weights through {server.weight_dir}" if server else ""))

        def evaluate():
            return heldout.answer(engine, heldout_prompts, evaluation, rewarder, trainer.autocast)

        suite = regression.suite_key(heldout_prompts)
        sampled = {"temperature": eval_temperature, "samples": evaluation.n, "max_new_tokens": new_tokens, "seed": flags.seed,
                   "reward_model": str(judge) if judge else None}
        before = []
        if heldout_prompts:  # the parent's own "after" answers when it answered this suite the same way
            reused = regression.parent_answers(parent, heldout_prompts, sampled)
            before = reused or cached(run.workdir / "heldout-start.json", repr(evaluation), evaluate)
        summary = run.train(trainer)
        results, files, fallen = {}, {}, []
        if heldout_prompts:
            after = evaluate()
            comparison = heldout.compare(before, after, flags.seed)
            columns = regression.columns(parent, suite, comparison, before, after, parent.name, out.name, resampled=not reused)
            tolerance = regression_tolerance if regression_tolerance is not None else table.regression_tolerance
            fallen = regression.regressions(columns, tolerance, flags.seed)
            console.print(regression.show(columns, f"held-out reward by domain after rl stage {stage} ({entry.name}): mean "
                                                   f"of {evaluation.n} answer(s) a prompt at temperature {eval_temperature:g}; "
                                                   f"change from the column before, 95% paired bootstrap interval"))
            results = {"heldout_reward": comparison, "heldout_sampling": sampled, "heldout_suite": suite,
                       "regression": {"suite": suite, "columns": columns, "tolerance": tolerance, "regressions": fallen}}
            files = {"heldout.jsonl": heldout.rows_jsonl(before, after)}
            write_eval_documents(loaded.paths.eval_root, parent, out, columns, stage)
        run.finish(trainer, summary, {
            "recipe": loaded.name, "stage": stage, "name": entry.name, "steps": n_steps, "lr": peak_lr, "warmup": warmup, "beta": kl,
            "samples_per_prompt": group, "prompts_per_step": per_step, "max_context": context, "max_new_tokens": new_tokens,
            "loss": normalisation, "scale_rewards": scale_rewards, "updates_per_batch": updates_per_batch,
            "rollout_server": rollout_server, "tis_cap": tis_cap if rollout_server else None,
            "prompts": dict(counts), "command": sys.argv,
        }, [input_record(Path(p)) for p in paths], results=results, files=files)
    noise = [regression.describe(f, tolerance) for f in fallen if not f["beyond_noise"]]
    if noise:
        console.print(f"rl stage {stage}: within noise, not a regression: {'; '.join(noise)}")
    if any(f["beyond_noise"] for f in fallen):
        message = "; ".join(regression.describe(f, tolerance) for f in fallen if f["beyond_noise"])
        if fail_on_regression:
            raise GraniteError(f"rl stage {stage} regressed: {message}. The checkpoint is in {out}; the next stage should "
                               f"not build on it as it is")
        console.print(f"[yellow]warning:[/] rl stage {stage} regressed: {message}")


# ------------------------------------------------------------------ inputs
def reward_model_path(given: Optional[str], default: Path, entry) -> Optional[Path]:
    """The reward model that scores chat prompts: --reward-model, else the run's one where it exists; a stage whose
    reward is the reward model's cannot run without one."""
    from model.reward_model import CALIBRATION

    path = Path(given) if given else default
    if (path / CALIBRATION).exists():
        return path
    if given:
        raise BadInput(f"not a reward model (no {CALIBRATION}): train one with `granite rl reward-model`", given)
    if entry.reward == "reward_model":
        raise BadInput(f"rl stage {entry.number} ({entry.name}) is scored by a reward model and there is none at {default}: "
                       f"run `granite rl reward-model` first, or pass --reward-model RM")
    return None


def write_eval_documents(eval_root: Path, parent: Path, out: Path, columns: list[dict], stage: int) -> None:
    """The per-domain rewards as eval results, for `granite eval table`: this stage's column, and the starting
    model's when this stage is the first to evaluate it."""
    from granite_cli.eval_results import write_results
    from model.checkpoint import stage_label
    from stages.rl.regression import eval_tasks

    if len(columns) == 2 and columns[0]["name"] == parent.name:
        write_results(eval_root / f"{parent.name}-rl-reward", str(parent), stage_label(parent), eval_tasks(columns[0]), [])
    write_results(eval_root / f"{out.name}-rl-reward", str(out), f"rl stage {stage}", eval_tasks(columns[-1]), [])


def rollout_server_of(url: Optional[str], model_name: str, weight_dir: Optional[str], run, tokenizer):
    """The external rollout server (server.py), or None to sample in-process."""
    from stages.rl.server import RolloutServer

    if not url:
        return None
    if run.dist.world > 1:
        raise BadInput("--rollout-server takes a one-process trainer: several processes sharing one server is not built")
    return RolloutServer(url, Path(weight_dir) if weight_dir else run.workdir / "rollout-weights", tokenizer,
                         model_name).connect()


def chat_tokenizer(parent: Path):
    from granite_cli.data.tokenizer_io import load_tokenizer

    tokenizer = load_tokenizer(str(parent))
    if not tokenizer.chat_template:
        raise BadInput("the checkpoint has no chat template: rl starts from a chat model (run `granite sft` first)", str(parent))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def policy_and_reference(parent: Path, beta: float, seed: int):
    """The policy (fp32 weights of the starting checkpoint), its frozen copy when beta > 0, and the lineage."""
    import copy

    import torch

    from model.checkpoint import load_model, read_lineage

    torch.manual_seed(seed)
    model = load_model(parent, dtype=torch.float32)
    return model, (copy.deepcopy(model) if beta > 0 else None), read_lineage(parent)


def policy_engine(model, tokenizer, device, batch_size: int):
    from model.generation import LocalEngine

    model.to(device)
    return LocalEngine.of_model(model, tokenizer, device, batch_size=batch_size, name="policy")


def fit_prompts(train, heldout, engine, tokenizer, context: int, max_new_tokens: int, counts) -> int:
    """Tokenize every prompt; the completion budget (given, or what the longest prompt leaves); prompts that leave
    no room for it are left out, counted. Returns the completion budget."""
    from stages.rl.prompts import tokenize

    tokenize(train + heldout, engine.prompt_text, tokenizer)
    longest = max(len(p.ids) for p in train + heldout)
    budget = max_new_tokens or context - longest
    if budget < 1 or budget >= context:
        raise BadInput(f"no room for completions: max context {context}, longest prompt {longest} tokens, "
                       f"max new tokens {max_new_tokens}")
    for pool, name in ((train, "train"), (heldout, "heldout")):
        kept = [p for p in pool if len(p.ids) + budget <= context]
        if len(kept) < len(pool):
            counts[f"left_out_too_long_{name}"] += len(pool) - len(kept)
            counts[name] -= len(pool) - len(kept)
            pool[:] = kept
    if not train:
        raise BadInput(f"every training prompt is longer than max context {context} minus {budget} new tokens")
    return budget


def cached(path: Path, settings: str, compute):
    """The starting model's held-out answers, kept in the run's work directory: a resumed run cannot redo them (the
    weights have moved by then), so it must ask for them with the same settings."""
    if path.exists():
        kept = json.loads(path.read_text())
        if kept["settings"] != settings:
            raise BadInput(f"--resume with other held-out settings than the run started with ({kept['settings']}); "
                           f"resume with the same flags, or pass --overwrite to start over")
        return kept["answers"]
    answers = compute()
    path.write_text(json.dumps({"settings": settings, "answers": answers}))
    return answers


app.command("reward-model")(reward_model.reward_model_command)
