"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s plugins`,
`nox -s docs`, `nox -s bench`. torch is pinned to the build this project's machines carry on disk,
so a session does not download gigabytes."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"

TORCH = ("torch==2.14.1", "torchaudio==2.11.0")
ROOT = Path(__file__).parent


def install_project(session: nox.Session, *extras: str) -> None:
    session.install(*TORCH)
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", spec)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite (unit, CLI, plugins, integration on ../shared/data)."""
    install_project(session, "dev")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff>=0.4")
    session.run("ruff", "check", "soundnet_cli", "tests", "plugins", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "soundnet_cli", "tests", "plugins", "benchmarks")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the library."""
    install_project(session, "dev")
    session.run("mypy")


@nox.session
def plugins(session: nox.Session) -> None:
    """Install each plugins/* package next to the core and run its tests."""
    install_project(session, "dev")
    packages = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file())
    if not packages:
        session.skip("no plugin packages under plugins/")
    for package in packages:
        session.install("-e", str(package))
    # The HEAR validator hard-requires TensorFlow, which it never uses on a torch model.
    session.install("--no-deps", "hearvalidator==2021.0.2")
    for package in packages:
        session.run("python", "-m", "pytest", str(package / "tests"), *session.posargs)
    # The core's contract tests, now over the installed plugins' components too.
    session.run("python", "-m", "pytest", "tests/plugins/test_contracts.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Check that every command and plugin hook is documented (the docs tests)."""
    install_project(session, "dev")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/cli/test_docs.py",
        "tests/plugins/test_hooks_documented.py",
        *session.posargs,
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Run every script under benchmarks/ (they print speed and memory figures)."""
    install_project(session, "dev")
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        session.run("python", str(script))
