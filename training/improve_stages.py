"""The stages of ``ponder improve``: collect, build data, fine-tune, fit the PRM, evaluate.

Each stage of iteration K writes ``iter-K/<stage>.json`` when done and is skipped when that file
is there, so a stage that finished but was not yet checkpointed by the loop's graph is not done
again (``training.improve``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ponder.errors import ConfigError
from ponder.training.evaluate import evaluate_policy, policy_settings, prm_backbone

__all__ = ["Stages"]

log = logging.getLogger(__name__)


# --- stages -------------------------------------------------------------------------------
class Stages:
    """The work of each stage; each is skipped when ``iter-K/<stage>.json`` says it is done."""

    def __init__(self, cfg: Any, policy_factory: Any = None):
        self.cfg = cfg
        self.make_policy = policy_factory or (
            _served_policy(cfg) if cfg.policy == "openai" else _local_policy
        )
        self._policies: dict[str | None, Any] = {}

    def _dir(self, k: int) -> Path:
        return self.cfg.run_dir / f"iter-{k}"

    def _once(self, k: int, stage: str, fn: Any) -> dict[str, Any]:
        marker = self._dir(k) / f"{stage}.json"
        if marker.exists():
            return json.loads(marker.read_text())
        t0 = time.perf_counter()
        result = {**fn(), "seconds": 0.0}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, marker)
        log.info("iteration %d: %s done in %.0f s", k, stage, result["seconds"])
        return result

    def policy(self, path: str | None) -> Any:
        if path not in self._policies:
            for old in self._policies.values():  # one model in memory at a time
                getattr(old, "close", lambda: None)()
            self._policies = {path: self.make_policy(path)}
        return self._policies[path]

    def release(self) -> None:
        for p in self._policies.values():
            getattr(p, "close", lambda: None)()
        self._policies = {}

    def collect(self, k: int, policy_path: str | None) -> dict[str, Any]:
        from ponder.config import RunConfig
        from ponder.runner import run

        def work() -> dict[str, Any]:
            policy, out = self.policy(policy_path), self._dir(k) / "collect"
            # the task seed (math) is pinned in env_kwargs, so each sampling run draws other samples
            # of the same tasks (the run's seed seeds sampling): distinct answers per task
            tasks, n = self.cfg.train_env(k)
            base = dict(
                env=self.cfg.env,
                tasks=n,
                feedback=self.cfg.feedback,
                temperature=self.cfg.temperature,
                concurrency=self.cfg.concurrency,
                embedder="hashing",
                runs_dir=str(out),
                resume=True,
                **policy_settings(policy),
            )
            runs, tokens = [], 0
            jobs = [
                dict(agent="retry", trials=1, name=f"sample-{s}", seed=s) for s in range(self.cfg.samples)
            ]
            jobs.append(dict(agent="retry-feedback", trials=self.cfg.trials, name="retry-feedback", seed=0))
            for job in jobs:
                rc = RunConfig(**{**base, "env_kwargs": tasks, **job})
                eps = run(rc, policy=policy, progress=False).episodes
                runs.append(str(rc.run_dir))
                tokens += sum(e["completion_tokens"] for e in eps)
            return {"runs": runs, "generated_tokens": tokens}

        return self._once(k, "collect", work)

    def data(self, k: int, collected: dict[str, Any]) -> dict[str, Any]:
        from ponder.training.datasets import build_dataset

        def work() -> dict[str, Any]:
            # a task that is also an evaluation task (level 1 has 81 questions in all) is dropped
            held = [
                str(p)
                for p in (self.cfg.run_dir / "iter-0" / "eval" / "heldout").glob("*")
                if (p / "config.yaml").exists()
            ]
            report = build_dataset(
                collected["runs"],
                kinds=self.cfg.kinds,
                max_per_task=self.cfg.max_per_task,
                seed=k,
                holdout=held,
            )
            path = self._dir(k) / "data" / "train.jsonl"
            report.write(path)
            (path.parent / "report.json").write_text(
                json.dumps({"by_kind": report.by_kind, "skipped": report.skipped}, indent=1, default=str)
            )
            return {"file": str(path), "examples": len(report.examples), "by_kind": report.by_kind}

        return self._once(k, "data", work)

    def train(self, k: int, data: dict[str, Any], base: str | None) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            self.release()  # the trainer's process gets the cores and the memory
            out = self._dir(k) / "policy"
            cmd = [
                sys.executable,
                "-m",
                "ponder.cli",
                "train",
                "sft",
                data["file"],
                "--out",
                str(out),
                "--resume",
                "--no-progress",
            ]
            cmd += [
                "--method",
                self.cfg.method,
                "--epochs",
                str(self.cfg.epochs),
                "--batch-size",
                str(self.cfg.batch_size),
            ]
            cmd += ["--truncate"]
            if base:
                cmd += ["--model", base]
            if self.cfg.learning_rate:
                cmd += ["--learning-rate", str(self.cfg.learning_rate)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            (self._dir(k) / "train.log").write_text(" ".join(cmd) + "\n" + done.stdout + done.stderr)
            if done.returncode != 0:
                raise ConfigError(
                    f"fine-tuning failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"
                )
            counts = json.loads((out / "ponder_train.json").read_text()).get("counts", {})
            return {
                "policy": str(out),
                "tokens_read": counts.get("tokens"),  # what the forward passes read
                "tokens_trained": counts.get("trained_tokens"),  # the tokens the loss was on
                "steps": counts.get("steps"),
            }

        return self._once(k, "train", work)

    def trained_elsewhere(self, k: int, data: dict[str, Any], name: str) -> dict[str, Any]:
        """The train stage of ``policy="openai"``: the model trained on ``data`` elsewhere,
        served under ``name``."""
        if not name or not isinstance(name, str):
            raise ConfigError("--trained needs the served model's name, e.g. --trained my-model-iter1")
        return self._once(
            k, "train", lambda: {"policy": name, "data": data["file"], "trained_elsewhere": True}
        )

    def _prm_backbone(self, policy: Any) -> Any:
        """The value head reads the policy itself when it is local, else ``cfg.prm_backbone``."""
        return prm_backbone(policy, self.cfg.prm_backbone)

    def prm(self, k: int, policy_path: str | None) -> dict[str, Any]:
        from ponder.environments import make
        from ponder.models.prm_train import fit_prm, label, save_labels

        def work() -> dict[str, Any]:
            if not self.cfg.prm_tasks:
                return {"prm": None}
            policy = self.policy(policy_path)
            if self.cfg.env == "math":
                env = make(
                    "math",
                    level=list(self.cfg.levels),
                    num_tasks=-(-self.cfg.prm_tasks // len(self.cfg.levels)),
                    seed=self.cfg.train_seed(k) + 1000,
                )
            else:  # the training rows: the PRM never sees an evaluation row either
                env = make(self.cfg.env, **self.cfg.env_kwargs, subset="train")
            records = label(
                policy,
                env,
                env.task_ids()[: self.cfg.prm_tasks],
                samples=self.cfg.prm_samples,
                rollouts=self.cfg.prm_rollouts,
                seed=k,
            )
            labels = save_labels(records, self._dir(k) / "prm-labels.jsonl")
            out = self._dir(k) / "prm"
            _, metrics = fit_prm(records, self._prm_backbone(policy), out=out, labels=[str(labels)], seed=k)
            return {"prm": str(out), "auc": (metrics.get("val") or {}).get("auc")}

        return self._once(k, "prm", work)

    def evaluate(self, k: int, policy_path: str | None, prm_path: str | None) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            policy = self.policy(policy_path)
            prm = None
            if prm_path:
                from ponder.models.prm_value import ValueHeadPRM

                prm = ValueHeadPRM.load(prm_path, backbone=self._prm_backbone(policy))
            return evaluate_policy(
                policy,
                prm,
                self.cfg.eval,
                self._dir(k) / "eval",
                env=self.cfg.env,
                env_kwargs=self.cfg.env_kwargs,
            )

        return self._once(k, "evaluate", work)


def _served_policy(cfg: Any) -> Any:
    """A factory of ``OpenAIPolicy`` for the served model named ``name`` at ``cfg.base_url``."""

    def make(name: str | None) -> Any:
        from ponder.models.openai_policy import OpenAIPolicy

        return OpenAIPolicy(model=name or cfg.model, base_url=cfg.base_url)

    return make


def _local_policy(path: str | None) -> Any:
    from ponder.models.local import LocalPolicy

    return LocalPolicy(model=path)
