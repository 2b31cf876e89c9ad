import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import lipgraph.stages  # noqa: E402,F401  (registers the pipeline's stage types)
from lipgraph.graph.registry import MODULES_ENV  # noqa: E402

# the engine tests' synthetic stage types, here and in the command lines the tests start
os.environ[MODULES_ENV] = "lipgraph.stages.synthetic"

SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")


@pytest.fixture
def specs_dir():
    """Folder of the upstream state-dict key lists, configs and the LatentSync mask."""
    return SPECS


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random MuseTalk models in the real formats (tools.synthetic.tiny_weights), built
    once per test session."""
    from lipgraph.tools.synthetic import tiny_weights
    return tiny_weights(str(tmp_path_factory.mktemp("tiny-models")))
