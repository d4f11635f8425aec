"""The README stays true: its config reference is the one the schema generates."""

from __future__ import annotations

from conftest import REPO_ROOT
from onnxport.config import config_reference


def test_readme_config_reference_matches_schema_docstrings():
    readme = (REPO_ROOT / "README.md").read_text()
    assert config_reference().rstrip() in readme, (
        "README's config reference is stale: regenerate it with `python -m onnxport.config`"
    )


def test_readme_names_the_two_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
