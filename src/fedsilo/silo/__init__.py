"""The silo side: the agent that pulls tasks and the job worker that runs task code."""

from fedsilo.silo._agent import Agent, run_agent

__all__ = ["Agent", "run_agent"]
