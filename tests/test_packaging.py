"""`pip install .` (not editable) gives a working package: every subpackage is in the wheel, the
declared Python version is the one the code needs, and the installed programs run outside the repo."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed():
    listed = set(PROJECT["tool"]["setuptools"]["packages"])
    mapping = PROJECT["tool"]["setuptools"]["package-dir"]
    found = set()
    for name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join((name, *relative.parts)))
    assert listed == found


def test_requires_python_matches_the_code():
    assert PROJECT["project"]["requires-python"] == ">=3.11"  # the code reads TOML with the standard library (3.11)
    assert any("tomllib" in path.read_text() for path in (ROOT / "codaar").rglob("*.py"))
    dependencies = " ".join(PROJECT["project"]["dependencies"])
    for imported in ("torch", "numpy", "safetensors", "tqdm", "nvtx", "matplotlib"):  # each one is used
        assert imported in dependencies
        pattern = re.compile(rf"^\s*(import|from) {imported}\b", re.MULTILINE)
        assert any(pattern.search(p.read_text()) for p in (ROOT / "codaar").rglob("*.py")), imported


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_repo(tmp_path):
    dist, fresh = tmp_path / "dist", tmp_path / "fresh"

    def run(*cmd, **kw):
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)

    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT))
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(dist.glob("codaar-*.whl"))
    # A fresh environment: the wheel alone, its dependencies read from this one's site-packages
    # (a plain path there: this environment's editable install of codaar does not reach it).
    assert run(sys.executable, "-m", "venv", "--without-pip", str(fresh)).returncode == 0
    python = fresh / "bin" / "python"
    site = Path(run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    str(wheel))
    assert installed.returncode == 0, installed.stderr[-3000:]

    every_module = ("import importlib, pathlib, pkgutil, codaar, codaar_kernels\n"
                    "for package in (codaar, codaar_kernels):\n"
                    f"    assert pathlib.Path(package.__file__).is_relative_to(pathlib.Path(r'{site}')), "
                    "package.__file__\n"
                    "    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
                    "        importlib.import_module(info.name)\n"
                    "print('imported')\n")
    imported = run(str(python), "-c", every_module, cwd=tmp_path)
    assert imported.returncode == 0 and "imported" in imported.stdout, imported.stderr[-3000:]
    trained = run(str(fresh / "bin" / "codaar-train"), "--max-steps", "2", "--dim", "16", "--num-codes", "8",
                  "--temporal-ffn-dim", "32", "--text-lstm-dim", "8", "--pretrain-clips", "40", "--batch-size", "20",
                  "--no-progress", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert trained.returncode == 0 and "CoDAAR pretraining: 2 steps" in trained.stdout, trained.stderr[-3000:]
    helped = run(str(python), "-m", "codaar.evaluate", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "usage: python -m codaar.evaluate" in helped.stdout, helped.stderr[-3000:]
