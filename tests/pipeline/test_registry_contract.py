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
