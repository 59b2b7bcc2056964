"""Streaming prediction, training and evaluation; task-agnostic."""
from .task import TASKS, Task

__all__ = ["TASKS", "Task"]
