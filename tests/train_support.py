"""Test support for training restarts (``tests/test_train_restarts.py``): a small complete checkpoint folder, and, run
as a script, the real ``rerank`` CLI in a process that SIGKILLs itself at a chosen point of training, as ``kill -9``
would (no handler, no cleanup, files left as they are on disk).

``python tests/train_support.py POINT train sft --config … --output …`` where POINT is ``step:K`` (inside step K:
after its backward pass, before the optimizer update), ``save:N`` (inside the save of checkpoint-N: weights,
optimizer, scheduler and RNG state written, ``trainer_state.json`` not) or ``weights:N`` (halfway through writing
checkpoint-N's first weights file). The process runs single-threaded with deterministic algorithms, as the tests do.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any


ERANK_TPL = ('name: erank-tiny\nuser: "Q: {{ query }}\\nD: {{ document }}\\nScore 0-10:"\n'
             'assistant_prefix: "<answer>"\nanswer_open: "<answer>"\nanswer_close: "</answer>"\n')


def erank_workdir(folder: Path, data_seed: int) -> Path:
    """``folder`` with a tiny Qwen2 (``llm``, seed 0), 12 synthetic ranking examples of 4 candidates (``train.jsonl``,
    drawn with ``data_seed``) and a tiny ERank template (``erank.yaml``): a few seconds of SFT or GRPO."""
    from rerank.data.io import write_jsonl
    from rerank.testing import synthetic_ranking_examples, tiny_llm

    tiny_llm(folder / "llm", seed=0)
    write_jsonl(synthetic_ranking_examples(12, num_candidates=4, seed=data_seed), folder / "train.jsonl")
    (folder / "erank.yaml").write_text(ERANK_TPL)
    return folder


def capture_cross_encoder_datasets(monkeypatch: Any) -> list[Any]:
    """Stop the cross-encoder trainer at construction: each call's ``train_dataset`` is appended to the returned list
    and ``KeyboardInterrupt`` raised, so a test sees the rows training would get without training."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainer

    seen: list[Any] = []

    def capture(self: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(kwargs["train_dataset"])
        raise KeyboardInterrupt

    monkeypatch.setattr(CrossEncoderTrainer, "__init__", capture)
    return seen


def stand_in_model(folder: Path) -> Path:
    """A folder that passes ``rerank train``'s check of its starting model (a ``config.json``), for trainers that
    load no model."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    return folder


def make_checkpoint(output: Path, step: int) -> Path:
    """A complete ``OUTPUT/checkpoints/checkpoint-STEP`` with the files a trainer writes (tiny contents)."""
    import torch
    from safetensors.torch import save_file

    ckpt = output / "checkpoints" / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    save_file({"w": torch.arange(4096.0).reshape(64, 64), "b": torch.zeros(64)}, str(ckpt / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(8)}}, "param_groups": [{"lr": 0.1}]}, ckpt / "optimizer.pt")
    torch.save({"last_epoch": step}, ckpt / "scheduler.pt")
    torch.save({"cpu": torch.random.get_rng_state()}, ckpt / "rng_state.pth")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return ckpt


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    """Patch the training library so this process kills itself at ``point`` (see the module docstring)."""
    kind, _, n_text = point.partition(":")
    n = int(n_text)
    if kind == "step":
        from transformers import Trainer

        training_step = Trainer.training_step

        def dying_step(self: Any, *args: Any, **kwargs: Any) -> Any:
            loss = training_step(self, *args, **kwargs)
            if self.state.global_step == n - 1:
                _die()
            return loss

        Trainer.training_step = dying_step  # type: ignore[method-assign]
    elif kind == "save":
        from transformers.trainer_callback import TrainerState

        save_to_json = TrainerState.save_to_json

        def dying_save(self: Any, json_path: str) -> None:
            if Path(json_path).parent.name == f"checkpoint-{n}":
                _die()
            save_to_json(self, json_path)

        TrainerState.save_to_json = dying_save  # type: ignore[method-assign]
    elif kind == "weights":
        import transformers.modeling_utils as mu

        save_file = mu.safe_save_file

        def dying_write(tensors: Any, filename: str, *args: Any, **kwargs: Any) -> None:
            save_file(tensors, filename, *args, **kwargs)
            if f"checkpoint-{n}" in Path(filename).parts:
                os.truncate(filename, os.path.getsize(filename) // 2)
                _die()

        mu.safe_save_file = dying_write
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    arm(sys.argv[1])
    from rerank.cli import main

    sys.exit(main(sys.argv[2:]))
