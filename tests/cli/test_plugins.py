import json


def test_plugins_json_lists_the_builtin_students(run):
    result = run("plugins", "--json")
    assert result.exit_code == 0
    listing = json.loads(result.stdout)
    students = [name for p in listing for name in p["registered"].get("student", [])]
    assert {"soundnet8", "soundnet5"} <= set(students)
    assert listing[0]["distribution"] == "soundnet-cli"


def test_plugins_table(run):
    result = run("plugins")
    assert result.exit_code == 0
    assert "builtin-students" in result.stdout and "soundnet8" in result.stdout


def test_unknown_global_plugin_block_is_harmless(run):
    result = run("--disable-plugin", "no-such-plugin", "plugins", "--json")
    assert result.exit_code == 0
