"""Issue 24's acceptance: a third-party student written from docs/plugins.md alone (keeping the
Student protocol, not subclassing StudentBase), installed as a plugin package, passes
check_student and works in `extract`, `evaluate esc10` and `search index`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import tone, write_wav
from ..fakes import make_esc_tree

FIXTURE = Path(__file__).parent / "fixtures" / "soundnet-framestats"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(FIXTURE)],
        check=True, capture_output=True,
    )  # fmt: skip
    return target


def python(site: Path, *args: str, home: Path) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "SOUNDNET_HOME": str(home),
        "SOUNDNET_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=environment, timeout=300
    )


@pytest.mark.third_party_plugins
def test_a_student_written_from_the_docs_works_in_the_commands(site, tmp_path):
    home = tmp_path / "home"
    check = python(site, "-c", (
        "from soundnet_cli import testing; from soundnet_cli.students import StudentBase;"
        "testing.check_registered_student('frame-stats');"
        "m = testing.plugins().students.create('frame-stats');"
        "print(isinstance(m, StudentBase))"
    ), home=home)  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "False"

    clips = tmp_path / "clips"
    for n in range(4):
        write_wav(clips / f"c{n}.wav", tone(2.0, freq=200 + 300 * n))
    features = tmp_path / "features"
    extract = python(site, "-m", "soundnet_cli", "extract", str(clips), "-o", str(features),
                     "--student", "frame-stats", "--json", home=home)  # fmt: skip
    assert extract.returncode == 0, extract.stderr
    assert len(list(features.glob("*.stats.npy"))) == 4

    index = python(site, "-m", "soundnet_cli", "search", "index", str(features), "--json",
                   home=home)  # fmt: skip
    assert index.returncode == 0, index.stderr
    query = python(site, "-m", "soundnet_cli", "search", "query", str(features), "--key", "c1",
                   "-k", "2", "--json", home=home)  # fmt: skip
    assert query.returncode == 0, query.stderr
    hits = json.loads(query.stdout)["results"]
    assert len(hits) == 2 and {h["key"] for h in hits} <= {"c0", "c1", "c2", "c3"}

    tree = make_esc_tree(tmp_path / "esc", {"low": 300.0, "high": 3000.0}, per_class=4, folds=2)
    evaluate = python(site, "-m", "soundnet_cli", "evaluate", "esc10", str(tree), "--student",
                      "frame-stats", "-l", "stats", "--json", home=home)  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr
    report = json.loads(evaluate.stdout)
    assert report["dataset"] == "esc10" and len(report["splits"]) == 2
    assert 0.0 <= report["summary"]["stats"]["mean"] <= 1.0  # tones alike in level: any score
