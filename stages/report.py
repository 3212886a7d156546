"""granite report: the report card of a run, from what its stages left behind (nothing is recomputed).

    granite report [RUNDIR] [-o OUT]

1. tables: every evaluated stage x task (eval results under RUNDIR/eval/), the held-out RL reward by domain and
   stage, the reward model's held-out accuracy, and the final model's lineage.
2. figures (matplotlib, Agg: no display needed), each left out with the reason when its data is not there:
   pre-training loss of every phase on one token axis with the phase boundaries and the LR underneath; loss by
   position before and after each context extension; the RULER length x depth grid; RL reward per domain
   across the stages; the SFT loss and the filter's verdicts by reason.
3. write: OUT/report.md with OUT/figures/*.png, and OUT/report.html, one file with the figures inlined.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Optional

import typer

from granite_cli import options
from granite_cli.console import console
from granite_cli.errors import BadInput
from model.checkpoint import read_lineage


def report_command(
    run_dir: Optional[str] = typer.Argument(None, help="The run directory. Default: the recipe's run_dir (runs/<recipe>/)."),
    recipe: Optional[str] = options.RecipeOption,
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Where the report goes. Default: RUNDIR/report/."),
) -> None:
    """Write the run's report card: report.md, figures/*.png and a self-contained report.html."""
    from granite_cli.recipe import load_recipe

    root = Path(run_dir) if run_dir else load_recipe(recipe, None).paths.root
    if not (root / "checkpoints").is_dir() and not (root / "eval").is_dir():
        raise BadInput("not a run directory (no checkpoints/ or eval/): run the recipe first (`make all`)", str(root))
    out = Path(output) if output else root / "report"
    (out / "figures").mkdir(parents=True, exist_ok=True)
    documents = eval_documents(root)
    blocks = [("h1", f"granite report: {root}")]
    blocks += evaluation_blocks(root, documents)
    for title, draw in FIGURES:
        blocks.append(("h2", title))
        path, missing = draw(root, out / "figures", documents)
        blocks.append(("figure", path, title) if path else ("p", f"Not drawn: {missing}."))
    blocks += lineage_blocks(root)
    (out / "report.md").write_text(markdown(blocks))
    (out / "report.html").write_text(page(blocks, root))
    console.print(f"wrote [bold]{out / 'report.md'}[/] and [bold]{out / 'report.html'}[/] "
                  f"({sum(1 for b in blocks if b[0] == 'figure')} figures)")


# ------------------------------------------------------------------ tables
def eval_documents(root: Path) -> list[dict]:
    """Every evaluation of the run (eval/*/results.json), oldest first; none is an empty list."""
    from granite_cli.eval_results import read_results

    try:
        return read_results(sorted((root / "eval").glob("*/")))
    except BadInput:
        return []


def evaluation_blocks(root: Path, documents: list[dict]) -> list:
    from granite_cli.eval_results import by_stage, reward_cell, shown

    if not documents:
        return [("h2", "Evaluation after each stage"), ("p", "No evaluation results under eval/.")]
    benchmarks, rewards = by_stage(documents)
    names = list(dict.fromkeys(n for tasks in benchmarks.values() for n in tasks))
    metric = {n: next(t[n]["main_metric"] for t in benchmarks.values() if n in t) for n in names}
    blocks = [("h2", "Evaluation after each stage"),
              ("p", "Percent, except bits per byte (lower is better) and ratings."),
              ("table", ["stage"] + [f"{n} ({metric[n]})" for n in names],
               [[stage] + [shown(metric[n], tasks[n]["value"]) if n in tasks else "-" for n in names]
                for stage, tasks in benchmarks.items() if tasks])]
    if rewards:
        domains = list(dict.fromkeys(d for cells in rewards.values() for d in cells))
        blocks += [("h2", "Held-out RL reward by domain"),
                   ("p", "Mean reward of the held-out prompts of every RL stage's data after each stage; after an RL "
                         "stage, in brackets, the change from the column before and its 95% paired bootstrap interval "
                         "over the prompts. A tiny model's rewards move by chance: a change whose interval spans zero "
                         "is not evidence."),
                   ("table", ["domain"] + list(rewards),
                    [[d] + [reward_cell(rewards[s][d]) if d in rewards[s] else "-" for s in rewards] for d in domains])]
    accuracy = last_entry(root / "checkpoints" / "reward-model").get("metrics", {}).get("heldout_accuracy")
    if accuracy:
        blocks.append(("p", f"Reward model: held-out pairwise accuracy {accuracy['accuracy']:.3f} (95% interval "
                            f"{accuracy['ci_low']:.3f}-{accuracy['ci_high']:.3f}, {accuracy['n']} pairs; chance 0.5)."))
    return blocks


def lineage_blocks(root: Path) -> list:
    """The lineage of the checkpoint finished last: every stage that made the final model."""
    finished = [(last_entry(p).get("finished", ""), p) for p in (root / "checkpoints").glob("*/") if (p / "lineage.json").exists()]
    if not finished:
        return [("h2", "Lineage of the final model"), ("p", "No finished checkpoint.")]
    final = max(finished)[1]
    rows = []
    for entry in read_lineage(final):
        arguments, metrics = entry.get("arguments", {}), entry.get("metrics", {})
        which = " ".join(f"{k} {arguments[k]}" for k in ("phase", "stage") if arguments.get(k) is not None)
        rows.append([entry["stage"], which, f"{metrics['tokens']:,}" if "tokens" in metrics else "-",
                     str(metrics.get("steps", "-")), f"{metrics['loss']:.4f}" if "loss" in metrics else "-",
                     entry.get("finished", "")])
    return [("h2", f"Lineage of the final model ({final.name})"),
            ("table", ["stage", "which", "tokens", "steps", "final loss", "finished"], rows)]


def last_entry(checkpoint: Path) -> dict:
    entries = read_lineage(checkpoint)
    return entries[-1] if entries else {}


def metrics_lines(checkpoint: Path) -> list[dict]:
    path = checkpoint / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ------------------------------------------------------------------ figures
def figure(rows: int = 1, columns: int = 1, height: float = 4.0, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, columns, figsize=(10, height), **kwargs)


def matplotlib_colours(count: int) -> list:
    """As many distinct colours as lines (the default cycle repeats after ten)."""
    import matplotlib

    return [matplotlib.colormaps["tab20"](i % 20) for i in range(count)]


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pretraining_figure(root: Path, folder: Path, documents: list[dict]):
    """Training loss of every pre-training phase (and phase 5's stages) on one token axis, the LR underneath."""
    runs = sorted(root.glob("checkpoints/pretrain-phase-*/"), key=lambda p: p.name)
    runs += sorted((p for p in root.glob("checkpoints/extend-context-*-trained/")), key=lambda p: last_entry(p).get("finished", ""))
    runs = [(p, [m for m in metrics_lines(p) if "loss" in m and "lr" in m]) for p in runs]
    runs = [(p, lines) for p, lines in runs if lines]
    if not runs:
        return None, "no pre-training metrics (checkpoints/pretrain-phase-N/metrics.jsonl)"
    fig, (loss, lr) = figure(2, 1, 6.0, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    offset = 0
    for path, lines in runs:
        x = [offset + m["tokens"] for m in lines]
        label = path.name.replace("pretrain-", "").replace("extend-context-", "phase 5 ").replace("-trained", "")
        loss.plot(x, [m["loss"] for m in lines], label=label)
        lr.plot(x, [m["lr"] for m in lines], color="black", linewidth=1)
        loss.axvline(offset, color="grey", linestyle=":", linewidth=0.8)
        offset = x[-1]
    loss.set_ylabel("training loss (nats/token)")
    loss.set_title("Pre-training: every phase on one token axis (dotted: phase boundaries)")
    loss.legend(fontsize=8, ncol=4)
    lr.set_ylabel("learning rate")
    lr.set_xlabel("tokens seen")
    return save(fig, folder / "pretraining_loss.png"), None


def positions_figure(root: Path, folder: Path, documents: list[dict]):
    """Loss by position of the parent, the extended and the merged model at each context-extension stage."""
    merges = [e for e in read_lineage(root / "checkpoints" / "extend-context")
              if e["stage"] == "merge" and e["arguments"].get("loss_by_position")]
    if not merges:
        return None, "no context extension with loss by position (checkpoints/extend-context)"
    fig, axes = figure(1, len(merges), 4.0, squeeze=False, sharey=True)
    for ax, entry in zip(axes[0], merges):
        for name, by_position in entry["arguments"]["loss_by_position"].items():
            buckets = [b for b, v in by_position.items() if v is not None]
            ax.plot(range(len(buckets)), [by_position[b] for b in buckets], marker="o", label=name)
            ax.set_xticks(range(len(buckets)), buckets, rotation=45, fontsize=7)
        extended = Path(entry["metrics"]["parents"][-1]["path"]).name.removeprefix("extend-context-").removesuffix("-trained")
        parent_weight = entry["metrics"]["parents"][0]["weight"]
        ax.set_title(f"stage {extended}: merged, parent weight {parent_weight:g}", fontsize=9)
        ax.set_xlabel("position bucket (tokens)")
    axes[0][0].set_ylabel("held-out loss (nats/token)")
    axes[0][0].legend(fontsize=8)
    return save(fig, folder / "loss_by_position.png"), None


def ruler_figure(root: Path, folder: Path, documents: list[dict]):
    """The latest RULER result as a length x depth heat map (needle tasks averaged)."""
    found = [d for d in documents if d["tasks"].get("ruler", {}).get("grids")]
    if not found:
        return None, "no RULER result (`granite eval --tasks ruler`)"
    # the extension's own result when there is one (what phase 5 is for), else the latest
    document = next((d for d in reversed(found) if d["stage"].startswith("extend-context")), found[-1])
    grids = {task: grid for task, grid in document["tasks"]["ruler"]["grids"].items() if task.startswith("niah")}
    lengths = sorted({int(n) for grid in grids.values() for n in grid})
    depths = sorted({d for grid in grids.values() for cells in grid.values() for d in cells}, key=float)
    cell = [[sum(g[str(n)][d] for g in grids.values() if str(n) in g and d in g[str(n)]) / max(1, len(grids))
             for n in lengths] for d in depths]
    fig, ax = figure(1, 1, 3.5)
    image = ax.imshow(cell, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), depths)
    for i in range(len(depths)):
        for j in range(len(lengths)):
            ax.text(j, i, f"{cell[i][j]:.2f}", ha="center", va="center", color="white" if cell[i][j] < 0.5 else "black")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(f"RULER needle retrieval, {document['stage']} (accuracy, {len(grids)} tasks averaged)")
    fig.colorbar(image, ax=ax)
    return save(fig, folder / "ruler_grid.png"), None


def rl_figure(root: Path, folder: Path, documents: list[dict]):
    """Held-out reward per domain across the RL stages (the last stage's regression table), each point with the 95%
    bootstrap interval of its mean over the domain's prompts, so that a dip within noise reads as one."""
    stages = sorted(root.glob("checkpoints/rl-stage-*/"), key=lambda p: p.name)
    tables = [last_entry(p).get("metrics", {}).get("regression") for p in stages]
    table = next((t for t in reversed(tables) if t), None)
    if not table:
        return None, "no RL stage with a regression table (checkpoints/rl-stage-N)"
    columns = table["columns"]
    fig, ax = figure(1, 1, 4.5)
    domains = [d for d in columns[-1]["domains"] if d != "all"]
    colours = matplotlib_colours(len(domains))
    for offset, (domain, colour) in enumerate(zip(domains + ["all"], colours + ["black"])):
        x = [i + 0.025 * (offset - len(domains) / 2) for i in range(len(columns))]  # spread so the bars do not overlap
        cells = [c["domains"].get(domain, {}) for c in columns]
        means, below, above = zip(*[interval_of(cell) for cell in cells])
        wide = domain == "all"
        ax.errorbar(x, means, yerr=[below, above], marker="o", markersize=3 if not wide else 5, capsize=2, color=colour,
                    linewidth=2.5 if wide else 1.2, elinewidth=0.8, label=domain)
    ax.set_xticks(range(len(columns)), [c["name"] for c in columns])
    ax.set_ylabel("held-out mean reward (95% interval)")
    ax.set_title("RL: held-out reward per domain after each stage (a dip shows what a stage cost)")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return save(fig, folder / "rl_reward.png"), None


def interval_of(cell: dict) -> tuple[float, float, float]:
    """(mean, distance down, distance up) of a regression-table cell; no bar where the per-prompt rewards were not
    kept (lineages written before they were)."""
    from granite_cli.stats import mean_interval

    mean = cell.get("mean", float("nan"))
    if not cell.get("rewards"):
        return mean, 0.0, 0.0
    _, low, high = mean_interval(cell["rewards"])
    return mean, max(mean - low, 0.0), max(high - mean, 0.0)


def sft_filter_figure(root: Path, folder: Path, documents: list[dict]):
    """SFT's training and validation loss, and the filter's rejections by rule."""
    lines = metrics_lines(root / "checkpoints" / "sft")
    audit = root / "filter" / "audit.jsonl"
    if not lines and not audit.exists():
        return None, "no SFT metrics (checkpoints/sft) and no filter audit (filter/audit.jsonl)"
    fig, (curve, reasons) = figure(1, 2, 4.0)
    trained = [m for m in lines if "loss" in m]
    validated = [m for m in lines if "val_loss" in m]
    curve.plot([m["step"] for m in trained], [m["loss"] for m in trained], label="training")
    curve.plot([m["step"] for m in validated], [m["val_loss"] for m in validated], marker="o", label="validation")
    curve.set_xlabel("step")
    curve.set_ylabel("loss on trained tokens (nats)")
    curve.set_title("SFT")
    curve.legend(fontsize=8)
    counts: dict[str, int] = {}
    verdicts: dict[str, int] = {}
    if audit.exists():
        for line in audit.read_text().splitlines():
            record = json.loads(line)
            verdicts[record["verdict"]] = verdicts.get(record["verdict"], 0) + 1
            for reason in record.get("reasons") or []:
                rule = reason.get("rule", "judge") if isinstance(reason, dict) else str(reason[0])
                counts[rule] = counts.get(rule, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: item[1])
    reasons.barh([r for r, _ in ranked], [n for _, n in ranked])
    reasons.set_xlabel("samples rejected or flagged")
    reasons.set_title("filter: " + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())), fontsize=9)
    return save(fig, folder / "sft_filter.png"), None


FIGURES = [("Pre-training loss", pretraining_figure), ("Loss by position, before and after each extension", positions_figure),
           ("RULER: length x depth", ruler_figure), ("RL reward by domain", rl_figure), ("SFT and filter", sft_filter_figure)]


# ------------------------------------------------------------------ writing
def markdown(blocks: list) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + block[1])
        elif kind == "p":
            out.append(block[1])
        elif kind == "table":
            headers, rows = block[1], block[2]
            out.append("\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                                 + ["| " + " | ".join(row) + " |" for row in rows]))
        elif kind == "figure":
            out.append(f"![{block[2]}](figures/{block[1].name})")
    return "\n\n".join(out) + "\n"


def page(blocks: list, root: Path) -> str:
    """One HTML file: the same blocks, each figure inlined as a base64 PNG."""
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "figure":
            data = base64.b64encode(block[1].read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}"></figure>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>granite report: {html.escape(str(root))}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
