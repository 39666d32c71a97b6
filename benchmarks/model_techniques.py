"""Which technique each real model gets: the model x technique table (issue: any model).

For each model of tests/test_real_models.py (transformers GPT-2, Llama with GQA, Mixtral,
BERT MLM, T5, ViT; a torchvision-style ResNet; user modules with a long skip, a fused q/k/v
attention and a dict forward) and each technique on 2 ranks, prints "ok" when the rules
accept it (and "ok =" when tests/test_real_models.py or tests/test_runtime_equivalence.py
also trains it equal to single-process training), else the one-line reason.

Run: python benchmarks/model_techniques.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autopar.profile.profiler import profile_model  # noqa: E402
from autopar.spec.enums import Precision  # noqa: E402
from autopar.spec.strategy import Strategy  # noqa: E402
from autopar.techniques import plan_problem  # noqa: E402
from tests.test_real_models import EQUAL, MODELS, TRAINING, _recipe  # noqa: E402

# technique -> (strategy checked by the rules, the knob an equality-tested strategy must have)
TECHNIQUES = {"dp": ("dp=2", "dp=2"), "zero=3": ("dp=2,zero=3", "zero=3"), "tp": ("tp=2", "tp=2"),
              "pp": ("pp=2,schedule=gpipe,microbatch=2", "pp=2"), "recompute": ("dp=2,recompute=full", "recompute=full"),
              "ep": ("dp=2,ep=2", "ep=2"), "cp": ("dp=2,cp=2", "cp=2")}


def main() -> None:
    print("| model | " + " | ".join(TECHNIQUES) + " |")
    print("|---" * (len(TECHNIQUES) + 1) + "|")
    for name in MODELS:
        facts = profile_model(_recipe(name).model, Precision.FP32).facts
        cells = []
        for text, knob in TECHNIQUES.values():
            problem = plan_problem(Strategy.parse(text), facts, TRAINING["global_batch"], Precision.FP32, None)
            if problem is not None:
                cells.append(problem)
                continue
            tested = any(knob in t.split(",") for t in EQUAL.get(name, ()))
            cells.append("ok =" if tested else "ok")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
