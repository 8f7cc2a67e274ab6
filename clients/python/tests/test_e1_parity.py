"""E1 on ml-latest-small through the server with the Python client gives the
in-process figures (`perennial eval`) within 2% (the learner is deterministic
in log order, so in practice they are equal). Skipped when the data set is
not beside the repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, _require_binary
from perennial import e1

DATA = REPO.parent / "shared" / "data" / "ml-latest-small"


def test_e1_through_the_server_matches_in_process(start_server, tmp_path: Path) -> None:
    if not (DATA / "ratings.csv").exists():
        pytest.skip("../shared/data/ml-latest-small is not present")
    out = tmp_path / "e1.json"
    subprocess.run([str(_require_binary()), "eval", "--protocol", "e1", "--data", str(DATA),
                    "--variants", "online", "--json", str(out)], check=True, capture_output=True)
    local = json.loads(out.read_text())["results"]["cf/online"]
    srv = start_server((REPO / "config" / "eval-e1.toml").read_text())
    with srv.client(timeout=120.0) as c:
        served = e1.run_e1(c, e1.load_ratings(str(DATA)), scorer="cf")
    print("E1 cf/online in process: HR@10 %.4f NDCG@10 %.4f (%d); through the server: %.4f %.4f (%d)"
          % (local["hr10"], local["ndcg10"], local["count"], served.total.hr, served.total.ndcg, served.total.count))
    assert served.total.count == local["count"]
    assert abs(served.total.hr - local["hr10"]) <= 0.02 * local["hr10"]
    assert abs(served.total.ndcg - local["ndcg10"]) <= 0.02 * local["ndcg10"]
