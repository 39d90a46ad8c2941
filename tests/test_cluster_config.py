"""ray_cluster.yaml passes Ray's own cluster-config validation, as `ray up` applies it."""
import copy

import pytest
import yaml
from helpers import REPO


def _prepared() -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(yaml.safe_load((REPO / "ray_cluster.yaml").read_text()))


def test_ray_cluster_yaml_validates_against_rays_schema():
    from ray.autoscaler._private.util import validate_config

    config = _prepared()
    validate_config(config)  # raises on any schema or consistency error
    assert config["head_node_type"] in config["available_node_types"]
    assert any("pip install -e /home/ubuntu/synthdata" in c for c in config["setup_commands"])
    assert config["file_mounts"]["/home/ubuntu/synthdata"] == "."
    # Services on the head bind loopback only.
    head = " ".join(config["head_start_ray_commands"] + config["head_setup_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--host 127.0.0.1" in head
    # The head takes no arms (Ray's advice for multi-node clusters): it advertises, and starts with, no CPUs.
    assert config["available_node_types"][config["head_node_type"]]["resources"]["CPU"] == 0
    assert "--num-cpus=0" in " ".join(config["head_start_ray_commands"])


def test_the_validation_would_catch_a_broken_config():
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    config = copy.deepcopy(_prepared())
    config["available_node_types"]["gpu_worker"]["max_workerz"] = 2
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)
