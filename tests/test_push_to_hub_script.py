"""scripts/push_to_hub.py reports the package's errors as one line, not as a traceback."""

from .conftest import make_tiny_pipeline
from .test_evaluation import run_script


def test_dry_run_without_metrics_is_a_one_line_error(tmp_path):
    make_tiny_pipeline().save_pretrained(tmp_path / "model")
    result = run_script("scripts/push_to_hub.py", "--model", str(tmp_path / "model"), "--repo_id", "u/x", "--dry_run")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("push_to_hub.py: error: ") and "metrics.json" in last
