"""Package layout: `tasks/` installs as `cvkit.tasks`, `presets/` as `cvkit._presets`
(metadata lives in pyproject.toml)."""
from setuptools import find_packages, setup

packages = (find_packages(include=["cvkit", "cvkit.*"])
            + ["cvkit.tasks"] + [f"cvkit.tasks.{p}" for p in find_packages("tasks")]
            + ["cvkit._presets"])
setup(packages=packages,
      package_dir={"cvkit": "cvkit", "cvkit.tasks": "tasks", "cvkit._presets": "presets"})
