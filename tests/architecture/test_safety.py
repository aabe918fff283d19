"""Loading never runs code it did not ask for: every `torch.load` in xmodal passes `weights_only=True`, and no
`from_pretrained` call turns `trust_remote_code` on by itself (only `model.trust_remote_code=true` does)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("data_builders", "losses", "trainers", "recipes", "scripts")


def unsafe_loads(root: Path) -> list[str]:
    """`file:line` of each torch.load without weights_only=True and each literal trust_remote_code=True."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                keywords = {k.arg: k.value for k in node.keywords}
                where = f"{path.relative_to(root)}:{node.lineno}"
                if node.func.attr == "load" and ast.unparse(node.func.value) == "torch":
                    weights_only = keywords.get("weights_only")
                    if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                        found.append(f"{where} torch.load without weights_only=True")
                remote = keywords.get("trust_remote_code")
                if isinstance(remote, ast.Constant) and remote.value is True:
                    found.append(f"{where} trust_remote_code=True")
    return found


def test_xmodal_loads_weights_only_and_never_trusts_remote_code_by_itself():
    assert unsafe_loads(REPO) == []


def test_unsafe_loads_are_reported(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "trainers" / "bad.py").write_text(
        "import torch\n"
        "torch.load('a.pt')\n"
        "torch.load('b.pt', weights_only=True)\n"
        "AutoModel.from_pretrained('x', trust_remote_code=True)\n"
        "AutoModel.from_pretrained('x', trust_remote_code=settings.trust)\n"
    )
    assert unsafe_loads(tmp_path) == [
        "trainers/bad.py:2 torch.load without weights_only=True",
        "trainers/bad.py:4 trust_remote_code=True",
    ]
