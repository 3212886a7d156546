"""IBM's published results for the Granite 4.1 instruct models (docs/recipe.md), for `--compare`."""

PUBLISHED = {
    # task: (benchmark as IBM reports it, {size: score})
    "mmlu_pro": ("MMLU-Pro (5-shot CoT)", {"3b": 49.83, "8b": 55.99, "30b": 64.09}),
    "bbh": ("BBH (3-shot CoT)", {"3b": 75.83, "8b": 80.51, "30b": 83.74}),
    "gsm8k": ("GSM8K (8-shot)", {"3b": 86.88, "8b": 92.49, "30b": 94.16}),
    "deepmind_math": ("DeepMind Math (0-shot CoT)", {"3b": 64.64, "8b": 80.07, "30b": 81.93}),
    "humaneval": ("HumanEval", {"3b": 79.27, "8b": 87.20, "30b": 89.63}),
    "humaneval_plus": ("HumanEval+", {"3b": 74.39, "8b": 80.49, "30b": 85.98}),
    "mbpp": ("MBPP", {"3b": 61.64, "8b": 82.54, "30b": 83.33}),
    "mbpp_plus": ("MBPP+", {"3b": 52.91, "8b": 70.64, "30b": 71.69}),
    "ifeval": ("IFEval (avg)", {"3b": 82.30, "8b": 87.06, "30b": 89.65}),
    "alpacaeval": ("AlpacaEval 2.0", {"3b": 38.57, "8b": 50.08, "30b": 56.16}),
    "arenahard": ("ArenaHard", {"3b": 37.80, "8b": 68.98, "30b": 71.02}),
    "bfcl": ("BFCL v3", {"3b": 60.80, "8b": 68.27, "30b": 73.68}),
}
MODELS = {"granite-4.1-3b": "3b", "granite-4.1-8b": "8b", "granite-4.1-30b": "30b"}
