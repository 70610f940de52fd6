"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s plugins`,
`nox -s docs`, `nox -s bench`, `nox -s mutants`. torch is pinned to the build this project's
machines carry on disk, so a session does not download gigabytes."""

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


# -- mutation testing ------------------------------------------------------------------------
# One row per module where a wrong number is silent: the file mutmut mutates, the fast unit tests
# that run against each mutant (pytest arguments), and optionally the functions whose mutants
# run (the rest of the file is left alone, to keep a module's run within minutes on 2 cores).
# Update a row when a module moves; docs/testing.md has the scores and the triage.
MUTANTS: dict[str, tuple[str, list[str], list[str]]] = {
    # The solver: the window scores, their adjoint, the segments and labels, the losses and the
    # fit's set-up, where a wrong number is silent. Left out: the preconditioner (_Preconditioner,
    # gram, _eigh, _cholesky), _pcg and _newton, whose mutants change how fast the fit converges
    # (the tests' optimum checks catch a wrong optimum, `converged` a stop), not which optimum.
    "solver": (
        "soundnet_cli/probes/solver.py",
        ["tests/unit/test_probe_solver.py", "-k", "not evaluate and not device and not choice"],
        [
            "WindowData.__init__",
            "WindowData.per_window",
            "WindowData.scores",
            "WindowData.adjoint",
            "_segments",
            "_at_least",
            "_SquaredHinge.*",
            "_BinaryLogistic.*",
            "_Multinomial.*",
            "_make_loss",
            "fit_linear",
        ],
    ),
    "chunks": (
        "soundnet_cli/extraction/chunks.py",
        [
            "tests/unit/test_extract_chunks.py",
            "-k",
            "plan or step_times or extract_array or tight_span or read_only_each",
        ],
        [],
    ),
    "inference": (
        "soundnet_cli/students/inference.py",
        # float64 stands in for half precision on a tiny model (the bf16 tests in
        # test_inference.py take a minute per mutant)
        ["tests/unit/test_inference_precision.py"],
        ["choose_precision", "precision_error", "stage_errors", "relative_error", "clip_errors"],
    ),
    "store": ("soundnet_cli/search/store.py", ["tests/unit/test_search.py"], []),
    "tables": ("soundnet_cli/prediction/tables.py", ["tests/unit/test_prediction_tables.py"], []),
    # what a resume trusts, redoes or adds, the settings two runs must share, the output names
    "features-folder": (
        "soundnet_cli/extraction/folder.py",
        [
            "tests/unit/test_extract_folder.py",
            "tests/unit/test_extract_safety.py",
            # the Parquet writer is the one whose start/forget take the folder's arguments
            "tests/unit/test_extract_parquet.py::test_rerun_skips_and_added_inputs_are_never_duplicated",
            "tests/unit/test_extract_parquet.py::test_linked_routes_get_their_own_rows",
            "tests/unit/test_extract_parquet.py::test_kill_9_after_a_part_then_rerun_equals_an_uninterrupted_run",
        ],
        [
            "FolderSettings.difference",
            "output_stem",
            "FeatureFolder.plan",
            "FeatureFolder._finished",
        ],
    ),
    "npz-writer": (
        "soundnet_cli/extraction/writers/npz.py",
        ["tests/unit/test_npz_writer.py", "tests/unit/test_extract_folder.py", "-k", "npz"],
        [],
    ),
    "training-loop": (
        "soundnet_cli/training/loop.py",
        # the loop alone on a fake clock (test_training_checks.py imports the distillation and
        # fine-tuning tests: seconds of collection per mutant for two NaN tests covered here too)
        ["tests/unit/test_training_loop.py"],
        [],
    ),
}
MUTMUT = "mutmut==3.8.1"
METHOD_MARK = "\u01c1"  # mutmut joins a class and its method with this letter


def mutant_workdir(name: str, base: Path) -> Path:
    """A scratch copy of the project for one module's run, with its own mutmut settings."""
    import shutil

    source, tests, functions = MUTANTS[name]
    work = base / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "soundnet_cli", work / "soundnet_cli")
    shutil.copytree(ROOT / "tests", work / "tests")
    shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
    selection = "".join(f"\n    {arg}" for arg in tests)
    (work / "setup.cfg").write_text(
        "[mutmut]\n"
        "source_paths = soundnet_cli\n"
        f"only_mutate = {source}\n"
        f"pytest_add_cli_args_test_selection ={selection}\n"
        "pytest_add_cli_args = -p no:cacheprovider -q\n"
        # torch's thread pools do not survive a plain fork; a fork server imports it once.
        "process_isolation = forkserver\n"
        "timeout_constant = 5\n"
    )
    module = source.removesuffix(".py").replace("/", ".")
    (work / "mutant-names").write_text(
        "\n".join(mutant_pattern(module, f) for f in functions) or f"{module}.*"
    )
    return work


def mutant_pattern(module: str, function: str) -> str:
    """mutmut's names for one function's mutants: ``x_NAME`` for a function, ``xǁCLASSǁNAME``
    for a method (``Class.method``; ``Class.*`` for every method of a class)."""
    if "." in function:
        return f"{module}.x{METHOD_MARK}{function.replace('.', METHOD_MARK)}__mutmut_*"
    return f"{module}.x_{function}__mutmut_*"


def mutant_score(results: str) -> tuple[int, int, dict[str, list[str]]]:
    """(killed, total, mutants by status) from the output of ``mutmut results --all true``.
    Run it with the environment's own ``mutmut`` (``session.run`` in the session)."""
    by_status: dict[str, list[str]] = {}
    for line in results.splitlines():
        mutant, _, status = line.strip().rpartition(": ")
        if "__mutmut_" in mutant:
            by_status.setdefault(status, []).append(mutant)
    total = sum(len(v) for k, v in by_status.items() if k != "not checked")
    # A mutant that makes the tests run past their time limit (a loop that never ends) is caught.
    killed = len(by_status.get("killed", [])) + len(by_status.get("timeout", []))
    return killed, total, by_status


@nox.session
def mutants(session: nox.Session) -> None:
    """Mutation testing (mutmut) of the modules where a wrong number is silent, one at a time,
    each against its own fast unit tests; prints a score per module. Not part of .ci/run.
    `nox -s mutants -- solver tables` runs only those rows of MUTANTS."""
    install_project(session, "dev")
    session.install(MUTMUT)
    names = session.posargs or [n for n in MUTANTS if (ROOT / MUTANTS[n][0]).is_file()]
    base = Path(session.create_tmp()) / "mutants"
    scores = []
    for name in names:
        work = mutant_workdir(name, base)
        patterns = (work / "mutant-names").read_text().split()
        with session.chdir(work):
            session.run("mutmut", "run", "--max-children", "2", *patterns)
            results = session.run("mutmut", "results", "--all", "true", silent=True)
        killed, total, by_status = mutant_score(str(results))
        for mutant in by_status.get("survived", []) + by_status.get("no tests", []):
            session.log(f"{name}: {mutant} not killed (`mutmut show {mutant}` in {work})")
        scores.append(f"{name}: {killed}/{total} killed ({100 * killed / max(total, 1):.0f}%)")
    for line in scores:
        session.log(line)
