"""The CLI's Hugging Face Jobs commands: `job` (inside a Job) and `deploy` (the Job and webhook that start it)."""

from __future__ import annotations

from bot.deploy import add_deploy_parser, run_deploy
from bot.jobentry import add_job_parser, run_job_command


def add_jobs_parsers(commands) -> None:
    add_job_parser(commands)
    add_deploy_parser(commands)


JOBS_COMMANDS = {"job": run_job_command, "deploy": run_deploy}
