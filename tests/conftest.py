"""Shared fixtures: small real models and helpers to run real exports in ONNX Runtime.

Everything here is real: torch modules, torch.onnx, ONNX Runtime. Nothing is mocked.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests must not depend on the developer's git identity or a GPU.
os.environ.setdefault("GIT_AUTHOR_NAME", "onnxport-tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@onnxport.invalid")
os.environ.setdefault("GIT_COMMITTER_NAME", "onnxport-tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@onnxport.invalid")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


class TinyMLP(nn.Module):
    """Two linear layers; the workhorse model of the suite."""

    def __init__(self, in_features: int = 4, hidden: int = 8, out_features: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class TinyCNN(nn.Module):
    """A conv net with batch norm and dropout, so training/eval mode matters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.bn(self.conv(image))).mean(dim=(2, 3))
        return self.head(self.drop(features))


class TwoInputs(nn.Module):
    """Two named tensor inputs and a tuple output."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proj(x) + y, (x * y).sum(dim=-1)


class DictOutput(nn.Module):
    """Nested dict output, for readable output names."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        logits = self.proj(x)
        return {"logits": logits, "extra": {"probs": logits.softmax(-1), "norm": x.norm(dim=-1)}}


class TokenClassifier(nn.Module):
    """Integer token ids in, as a text model takes them."""

    def __init__(self, vocab: int = 50, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids).mean(dim=1))


@torch.library.custom_op("onnxport_tests::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    """A custom operator with no ONNX translation in either exporter."""
    return x.flip(-1)


@mystery.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Mysterious(nn.Module):
    """Uses ``onnxport_tests::mystery``, which no exporter can translate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mystery(x) + 1


@pytest.fixture
def mlp() -> TinyMLP:
    torch.manual_seed(0)
    return TinyMLP().eval()


@pytest.fixture
def mlp_input() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 4)


@pytest.fixture
def cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN()


class TinyEncoder(nn.Module):
    """A small TransformerEncoder over token features with a class-score head (variants' transformer)."""

    def __init__(self, dim: int = 32, classes: int = 5) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(tokens).mean(dim=1))


def prototype_tokens(
    count: int, seed: int, classes: int = 5, dim: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, 6, dim) token sequences around one of ``classes`` fixed prototypes, and the class."""
    prototypes = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (count,), generator=generator)
    tokens = prototypes[labels].unsqueeze(1) + torch.randn(count, 6, dim, generator=generator)
    return tokens, labels


@pytest.fixture(scope="session")
def tiny_encoder() -> TinyEncoder:
    """A TinyEncoder fitted to tell :func:`prototype_tokens` classes apart: decisive class scores, as a
    trained model has (an untrained head's near-ties flip under any rounding)."""
    torch.manual_seed(0)
    model = TinyEncoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        tokens, labels = prototype_tokens(32, seed=step)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(tokens), labels).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (bundled, no download) as (N, 1, 8, 8) floats in [0, 1] and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return images, torch.tensor(data.target)


@pytest.fixture(scope="session")
def digits_cnn(digits: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """The reference pipeline's DigitsCNN, fitted for two quick epochs (trained logits, not near-ties)."""
    from pipelines.model import DigitsCNN

    images, labels = digits
    torch.manual_seed(0)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for start in range(0, 1280, 64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images[start : start + 64]), labels[start : start + 64])
            loss.backward()
            optimizer.step()
    return model.eval()


def run_onnx(path: str | os.PathLike, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a real ONNX Runtime CPU session on ``feed`` and return every output."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def onnx_input_names(path: str | os.PathLike) -> list[str]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [i.name for i in session.get_inputs()]


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """An empty git repository with an identity, for tests that need provenance or dvc."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run(["git", "config", "user.email", "tests@onnxport.invalid"], cwd=repo, check=True)
    subprocess.run(["git", "config", "user.name", "onnxport-tests"], cwd=repo, check=True)
    return repo


# -- a project laid out like the lightning-hydra-template (tests/template/) -----------------------

TEMPLATE_DIR = Path(__file__).resolve().parent / "template"


def _forget_template_modules() -> None:
    """Drop the template's ``src`` package from ``sys.modules``: each copy must import its own files."""
    import sys

    for name in [name for name in sys.modules if name == "src" or name.startswith("src.")]:
        del sys.modules[name]


@pytest.fixture
def template_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh copy of ``tests/template/``: a lightning-hydra-template-shaped project on digits.

    The copy (``configs/``, ``src/``, ``.project-root``) is the working directory, is first on
    ``sys.path`` (so ``src.models...`` targets import, as the template's ``rootutils`` arranges) and
    is ``PROJECT_ROOT``. Nothing is trained: see :func:`compose_template` and ``src/train.py``.
    """
    import shutil

    project = tmp_path / "project"
    shutil.copytree(TEMPLATE_DIR, project, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    _forget_template_modules()
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.setenv("PROJECT_ROOT", str(project))
    yield project
    _forget_template_modules()


@pytest.fixture(autouse=True)
def _no_hydra_state_between_tests():
    """Hydra's singletons (a HydraConfig set as a Hydra run sets it, e.g. by ``compose_template``, or
    an initialised GlobalHydra) would make later tests resolve ``${hydra:...}`` and re-apply stale
    command-line overrides: each test starts without them."""
    yield
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


def compose_template(project: Path, overrides: list[str] | tuple[str, ...] = ()):
    """``configs/train.yaml`` of a template project, composed as its tests compose it, ready for
    ``src.train.train(cfg)`` in this process.

    As the template's own ``tests/conftest.py`` does: ``return_hydra_config=True``, ``paths.output_dir``
    set to ``<project>/logs/train/runs/test`` (``${hydra:runtime.output_dir}`` is only set by
    ``@hydra.main``), ``HydraConfig`` set; colorlog logging swapped for Hydra's default (hydra-colorlog
    is not installed here), one CPU epoch, no config printing.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    base = ["hydra/hydra_logging=default", "hydra/job_logging=default", "trainer.max_epochs=1"]
    with initialize_config_dir(config_dir=str(project / "configs"), version_base="1.3"):
        cfg = compose(config_name="train.yaml", return_hydra_config=True, overrides=[*base, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(project / "logs" / "train" / "runs" / "test")
        cfg.hydra.runtime.output_dir = cfg.paths.output_dir
        cfg.extras.print_config = False
        cfg.extras.enforce_tags = False
    HydraConfig().set_config(cfg)
    return cfg


def train_template(project: Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """A copy of ``tests/template/`` at ``project`` after one CPU epoch of its own ``train()``.

    Returns the template's ``object_dict`` (``trainer``, ``model``, ...). The working directory,
    ``sys.path`` and ``PROJECT_ROOT`` are set for the training only, as ``template_project`` sets them.
    """
    import shutil

    shutil.copytree(TEMPLATE_DIR, project, ignore=shutil.ignore_patterns("__pycache__"))
    with pytest.MonkeyPatch.context() as patch:
        _forget_template_modules()
        patch.chdir(project)
        patch.syspath_prepend(str(project))
        patch.setenv("PROJECT_ROOT", str(project))
        from src.train import train

        _, objects = train(compose_template(project, ["test=False", *overrides]))
        _forget_template_modules()
    return objects


def tiny_transformer(kind: str) -> nn.Module:
    """A transformers model from a tiny config (hidden 32, 2 layers, vocabulary 100), random weights."""
    import transformers

    torch.manual_seed(0)
    small = {"vocab_size": 100, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
    if kind == "bert":
        model = transformers.BertModel(transformers.BertConfig(hidden_size=32, **small))
    elif kind == "clip":
        model = transformers.CLIPTextModel(transformers.CLIPTextConfig(hidden_size=32, **small))
    elif kind == "llama":
        config = transformers.LlamaConfig(hidden_size=32, num_key_value_heads=2, **small)
        model = transformers.LlamaForCausalLM(config)
    elif kind == "gpt2":
        model = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2)
        )
    elif kind == "t5-encoder":
        config = transformers.T5Config(
            vocab_size=100, d_model=32, d_kv=16, d_ff=37, num_layers=2, num_heads=2
        )
        model = transformers.T5EncoderModel(config)
    else:
        raise ValueError(kind)
    return model.eval()


def token_batch(batch: int = 2, length: int = 8, *, padded: str = "right") -> dict[str, torch.Tensor]:
    """input_ids and an attention mask as a tokenizer pads them: the second row 3 tokens short."""
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(batch, length, dtype=torch.long)
    if padded == "right":
        mask[1:, length - 3 :] = 0
    elif padded == "left":
        mask[1:, :3] = 0
    return {"input_ids": torch.randint(0, 100, (batch, length), generator=generator), "attention_mask": mask}
