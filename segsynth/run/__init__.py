"""``segsynth run``: the whole loop on a user's dataset folder, planned from its fingerprint."""

from segsynth.run.stages import run_all
from segsynth.run.plan import Choice, RunPlan, benchmark_config, load_plan, plan_run, save_plan

__all__ = ["Choice", "RunPlan", "benchmark_config", "load_plan", "plan_run", "run_all", "save_plan"]
