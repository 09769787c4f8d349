"""Global prefix analysis: groups of requests sharing a prompt prefix, in execution order."""

from batchllm_cli.planner.build import build_plan
from batchllm_cli.planner.plan import Plan, PlanSettings, PrefixGroup
from batchllm_cli.planner.stats import PlanStats

__all__ = ["Plan", "PlanSettings", "PlanStats", "PrefixGroup", "build_plan"]
