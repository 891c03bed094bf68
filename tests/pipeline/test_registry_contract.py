"""What every registered version tells the people who load it (tasks.tracking.contract_tags)."""

import json


def test_the_contract_names_the_input_scale_the_outputs_and_every_class():
    import torch

    from tasks.tracking import contract_tags

    tags = contract_tags(torch.zeros(2, 3, 32, 32), ["T-shirt/top", 'a "quoted"\nname', "Ünïcode"])
    assert tags["input"].startswith("float32 (N, 3, 32, 32)") and "[0, 1]" in tags["input"]
    assert tags["output"].startswith("logits (N, 3), not probabilities") and "'classes' tag" in tags["output"]
    assert json.loads(tags["classes"]) == ["T-shirt/top", 'a "quoted"\nname', "Ünïcode"]


def test_a_class_list_past_mlflows_tag_bound_is_left_to_the_artifact_and_never_written_as_non_json():
    import torch

    from tasks.tracking import contract_tags

    many = [f"class number {i:06d} with a long descriptive name" for i in range(3000)]  # ~150,000 characters
    tags = contract_tags(torch.zeros(2, 1, 8, 8), many)
    assert "classes" not in tags and "classes.json" in tags["output"] and "'classes' tag" not in tags["output"]
    some = many[:200]  # ~10,000 characters: over the 5,000 once assumed, well inside MLflow's 100,000
    assert json.loads(contract_tags(torch.zeros(2, 1, 8, 8), some)["classes"]) == some


def test_the_git_commit_tag_says_when_the_configuration_or_code_differs_from_it(make_project):
    """The tag named HEAD while the run used an uncommitted params.yaml (consumer review, 2026-12-06)."""
    import subprocess

    from tasks import dvc_ops
    from tasks.project import load_project

    root = make_project(registry=False)
    project = load_project(root)
    assert dvc_ops.git_commit(project) == "uncommitted"
    (root / "mymodels.py").write_text("NET = 1\n")
    (root / "data" / "requests").mkdir(parents=True)
    (root / "data" / "requests" / "ledger.json").write_text("{}\n")
    git = lambda *args: subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True)  # noqa: E731
    git("add", "-A")
    git("commit", "-q", "-m", "project")
    sha = git("rev-parse", "HEAD").stdout.strip()
    assert dvc_ops.git_commit(project) == sha
    (root / "data" / "requests" / "ledger.json").write_text('{"batches": {}}\n')  # the pipeline's own records
    (root / "notes.py").write_text("untracked = True\n")
    assert dvc_ops.git_commit(project) == sha
    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params.replace("seed: 0", "seed: 1", 1))
    assert dvc_ops.git_commit(project) == f"{sha}+dirty"
    (root / "params.yaml").write_text(params)
    (root / "mymodels.py").write_text("NET = 2\n")  # a tracked model module
    assert dvc_ops.git_commit(project) == f"{sha}+dirty"
